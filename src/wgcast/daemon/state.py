"""Engine state that survives a restart: the router-id, the last seqno and when it was saved.

Babel needs a restarted node to continue its sequence numbers: routes announced with a
seqno older than the one its neighbours remember would be unfeasible until the old
ones expire. The state is a small JSON file, written atomically (temporary file in the
same directory, fsync, rename, fsync of the directory), so a crash leaves either the
old or the new file, never half of one::

    {"version": 1, "router_id": "0123456789abcdef", "seqno": 4711, "saved": 1700000000.25}

`load_state` never raises: a missing file means a first start; a corrupt or unreadable
one is reported (logged as a warning, or handed to `report`) and ignored, and the
daemon starts fresh.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = ["STATE_VERSION", "State", "StateError", "load_state", "read_state", "save_state"]

log = logging.getLogger("wgcast.state")

STATE_VERSION: Final = 1
#: A state file larger than this is not one of ours.
MAX_STATE_SIZE: Final = 64 * 1024
ROUTER_ID_LEN: Final = 8
MAX_SEQNO: Final = 0xFFFF


class StateError(Exception):
    """A state file that cannot be read or written; the message names the file."""


@dataclass(frozen=True, slots=True)
class State:
    """What the engine persists. `saved` is a Unix time (defaults to now)."""

    router_id: bytes
    seqno: int
    saved: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        if not isinstance(self.router_id, bytes) or len(self.router_id) != ROUTER_ID_LEN:
            raise ValueError(f"router_id must be {ROUTER_ID_LEN} bytes")
        if isinstance(self.seqno, bool) or not isinstance(self.seqno, int) or not (
            0 <= self.seqno <= MAX_SEQNO
        ):
            raise ValueError(f"seqno must be an integer from 0 to {MAX_SEQNO}")
        if not math.isfinite(self.saved):
            raise ValueError("saved must be a finite time")

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": STATE_VERSION,
                "router_id": self.router_id.hex(),
                "seqno": self.seqno,
                "saved": self.saved,
            },
            sort_keys=True,
        ) + "\n"

    @classmethod
    def from_json(cls, text: str, path: str = "<string>") -> State:
        """Parse the file's text; raises StateError naming `path` and what was expected."""
        try:
            data: Any = json.loads(text)
        except (ValueError, RecursionError) as e:
            raise StateError(f"{path}: expected a JSON object, got invalid JSON ({e})") from None
        if not isinstance(data, dict):
            raise StateError(f"{path}: expected a JSON object, got {type(data).__name__}")
        version = data.get("version")
        if version != STATE_VERSION:
            if isinstance(version, int) and not isinstance(version, bool) and version > 1:
                raise StateError(
                    f"{path}: version: expected {STATE_VERSION}, got {version} "
                    "(written by a newer wgcast)"
                )
            raise StateError(f"{path}: version: expected {STATE_VERSION}, got {version!r}")
        rid = data.get("router_id")
        if not isinstance(rid, str) or not re.fullmatch(r"[0-9a-fA-F]{16}", rid):
            raise StateError(
                f"{path}: router_id: expected {2 * ROUTER_ID_LEN} hex digits, got {rid!r}"
            )
        seqno = data.get("seqno")
        if isinstance(seqno, bool) or not isinstance(seqno, int) or not 0 <= seqno <= MAX_SEQNO:
            raise StateError(
                f"{path}: seqno: expected an integer from 0 to {MAX_SEQNO}, got {seqno!r}"
            )
        saved = data.get("saved")
        if (
            isinstance(saved, bool)
            or not isinstance(saved, int | float)
            or not math.isfinite(saved)
            or saved < 0
        ):
            raise StateError(f"{path}: saved: expected a Unix time, got {saved!r}")
        return cls(bytes.fromhex(rid), seqno, float(saved))


def read_state(path: str | os.PathLike[str]) -> State | None:
    """The saved state, None if there is no file; raises StateError if it is unusable."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            raw = f.read(MAX_STATE_SIZE + 1)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise StateError(f"{name}: cannot read: {e.strerror or e}") from None
    if len(raw) > MAX_STATE_SIZE:
        raise StateError(f"{name}: expected a state file under {MAX_STATE_SIZE} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise StateError(f"{name}: expected UTF-8 JSON, got binary data") from None
    return State.from_json(text, name)


def load_state(
    path: str | os.PathLike[str], report: Callable[[str], None] | None = None
) -> State | None:
    """The saved state, or None (missing, corrupt or unreadable: start fresh).

    Never raises. A problem is handed to `report` (default: a warning on the
    "wgcast.state" logger) with a message that names the file.
    """
    try:
        return read_state(path)
    except StateError as e:
        message = f"{e}; ignoring it and starting with a fresh state"
    except Exception as e:  # a state file must never stop the daemon
        message = f"{os.fspath(path)}: cannot load state ({e!r}); starting with a fresh state"
    if report is None:
        log.warning("%s", message)
    else:
        report(message)
    return None


def save_state(path: str | os.PathLike[str], state: State) -> None:
    """Write `state` atomically, creating the directory if needed; raises StateError."""
    name = os.fspath(path)
    directory = os.path.dirname(name) or "."
    data = state.to_json().encode()
    tmp: str | None = None
    try:
        os.makedirs(directory, mode=0o755, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(name)}.", suffix=".tmp",
                                   dir=directory)
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o644)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, name)
        tmp = None
        _fsync_dir(directory)
    except OSError as e:
        raise StateError(f"{name}: cannot save state: {e.strerror or e}") from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _fsync_dir(directory: str) -> None:
    """Make the rename durable; not every file system lets a directory be fsynced."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
