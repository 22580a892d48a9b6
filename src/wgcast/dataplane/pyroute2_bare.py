"""Import as ``import wgcast.dataplane.pyroute2_bare`` before any pyroute2 import: makes
``pyroute2`` a bare package (unless it is already imported).

pyroute2's own ``__init__`` imports every pyroute2 module (NDB, IPDB, sqlite3,
multiprocessing, ...), about 100 modules the daemon never uses, which made up much of
a daemon's start where Python starts slowly (the emulated guest of `make test-kernel`).
The dataplane modules import the submodules they need; anything else asked of the
package itself (``from pyroute2 import NDB`` elsewhere) runs the real ``__init__`` then.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys


def _bare_pyroute2() -> None:
    if "pyroute2" in sys.modules:
        return
    spec = importlib.util.find_spec("pyroute2")
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        return  # not installed: the importing module says so itself
    mod = importlib.util.module_from_spec(spec)
    loader = spec.loader

    def full(name: str) -> object:
        """A submodule (``from pyroute2 import config``) is imported; anything else
        runs the package's real __init__, once."""
        if importlib.util.find_spec(f"pyroute2.{name}") is not None:
            return importlib.import_module(f"pyroute2.{name}")
        del mod.__dict__["__getattr__"]
        loader.exec_module(mod)
        return getattr(mod, name)

    mod.__getattr__ = full  # type: ignore[method-assign]
    sys.modules["pyroute2"] = mod


_bare_pyroute2()
