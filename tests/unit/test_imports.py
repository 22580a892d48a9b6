"""The module graph stays a tree where it matters: no import cycle inside `wgcast.daemon`
or `wgcast.lab`, and only the runtime imports the daemon's services.

Imports are read with `ast`, all of them: top-level, inside functions and under
`if TYPE_CHECKING:` (a cycle hidden from the interpreter still ties the modules together
for a reader and for mypy).
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"

#: The daemon's services: each gets ports (daemon/ports.py), only the runtime wires them.
SERVICES = {
    "wgcast.daemon.api", "wgcast.daemon.applier", "wgcast.daemon.endpoint_manager",
    "wgcast.daemon.membership", "wgcast.daemon.metrics", "wgcast.daemon.peer_policy",
    "wgcast.daemon.transport", "wgcast.daemon.lan",
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the wgcast modules it imports (a `from pkg import name` counts as
    `pkg.name` when that is a module, else as `pkg`)."""
    files = {_module_name(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        is_pkg = path.name == "__init__.py"
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = mod.split(".")[: len(mod.split(".")) - node.level + is_pkg]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for a in node.names:
                    sub = f"{target}.{a.name}"
                    deps.add(sub if sub in files else target)
        graph[mod] = {d for d in deps if d in files and d != mod}
    return graph


def cycles(graph: dict[str, set[str]], package: str) -> list[list[str]]:
    """Strongly connected components of more than one module among `package`'s."""
    nodes = [m for m in graph if m == package or m.startswith(package + ".")]
    sub = {m: {d for d in graph[m] if d in nodes} for m in nodes}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sub[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(sub):
        if v not in index:
            visit(v)
    return out


def test_the_graph_sees_the_imports() -> None:
    g = import_graph()
    assert "wgcast.daemon.ports" in g["wgcast.daemon.runtime"]
    assert "wgcast.daemon.api_context" in g["wgcast.daemon.membership"]
    # A cycle is found when there is one.
    assert cycles({"p.a": {"p.b"}, "p.b": {"p.a"}, "p.c": set()}, "p") == [["p.a", "p.b"]]


def test_no_import_cycle_in_the_daemon() -> None:
    assert cycles(import_graph(), "wgcast.daemon") == []


def test_no_import_cycle_in_the_lab() -> None:
    assert cycles(import_graph(), "wgcast.lab") == []


def test_only_the_runtime_imports_the_services() -> None:
    g = import_graph()
    for mod, deps in g.items():
        if mod == "wgcast.daemon.runtime":
            continue
        assert not deps & (SERVICES - {mod}), f"{mod} imports {sorted(deps & SERVICES)}"


def test_the_ports_and_the_core_import_no_service() -> None:
    g = import_graph()
    for mod in ("wgcast.daemon.ports", "wgcast.daemon.api_context", "wgcast.prefix"):
        assert not g[mod] & (SERVICES | {"wgcast.daemon.runtime"}), mod
