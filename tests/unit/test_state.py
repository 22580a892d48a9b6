"""wgcast.daemon.state: atomic round trips; missing or corrupt files never crash."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wgcast.daemon.state import State, StateError, load_state, read_state, save_state

RID = bytes.fromhex("0123456789abcdef")


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "wg0.state"
    state = State(RID, 4711, 1_700_000_000.25)
    save_state(path, state)
    assert load_state(path) == state
    assert read_state(str(path)) == state
    data = json.loads(path.read_text())
    assert data == {"version": 1, "router_id": "0123456789abcdef", "seqno": 4711,
                    "saved": 1_700_000_000.25}
    assert path.stat().st_mode & 0o777 == 0o644


def test_overwrite_leaves_no_temporary_files(tmp_path: Path) -> None:
    path = tmp_path / "wg0.state"
    for seqno in range(5):
        save_state(path, State(RID, seqno, 1.0))
    assert load_state(path) == State(RID, 4, 1.0)
    assert os.listdir(tmp_path) == ["wg0.state"]


def test_save_creates_directory(tmp_path: Path) -> None:
    path = tmp_path / "var" / "lib" / "wgcast" / "wg0.state"
    save_state(path, State(RID, 1, 2.0))
    assert load_state(path) == State(RID, 1, 2.0)


def test_saved_defaults_to_now() -> None:
    import time

    before = time.time()
    assert before <= State(RID, 0).saved <= time.time()


def test_missing_is_none_and_silent(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    reports: list[str] = []
    assert load_state(tmp_path / "nope.state", reports.append) is None
    assert read_state(tmp_path / "nope.state") is None
    assert reports == []
    assert load_state(tmp_path / "nope.state") is None
    assert caplog.records == []


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"", "invalid JSON"),
        (b"{not json", "invalid JSON"),
        (b"\xff\xfe\x00garbage", "UTF-8"),
        (b"[1, 2]", "expected a JSON object, got list"),
        (b'{"router_id": "0123456789abcdef", "seqno": 1, "saved": 1}', "version: expected 1"),
        (b'{"version": 7, "router_id": "0123456789abcdef", "seqno": 1, "saved": 1}',
         "newer wgcast"),
        (b'{"version": 1, "router_id": "0123", "seqno": 1, "saved": 1}',
         "router_id: expected 16 hex digits"),
        (b'{"version": 1, "router_id": "0123456789abcdeg", "seqno": 1, "saved": 1}',
         "router_id"),
        (b'{"version": 1, "router_id": "0123456789abcdef", "seqno": 65536, "saved": 1}',
         "seqno: expected an integer from 0 to 65535"),
        (b'{"version": 1, "router_id": "0123456789abcdef", "seqno": true, "saved": 1}',
         "seqno"),
        (b'{"version": 1, "router_id": "0123456789abcdef", "seqno": 1, "saved": "x"}',
         "saved: expected a Unix time"),
        (b'{"version": 1, "router_id": "0123456789abcdef", "seqno": 1, "saved": -1}',
         "saved"),
        (b'{"version": 1, "router_id": "0123456789abcdef", "seqno": 1, "saved": NaN}',
         "saved"),
        (b"[" * 100_000, "state file under"),
        (b"[" * 50_000, "invalid JSON"),
    ],
)
def test_corrupt_is_reported_and_ignored(tmp_path: Path, content: bytes, fragment: str) -> None:
    path = tmp_path / "wg0.state"
    path.write_bytes(content)
    with pytest.raises(StateError) as info:
        read_state(path)
    assert str(info.value).startswith(f"{path}: ")
    assert fragment in str(info.value)
    reports: list[str] = []
    assert load_state(path, reports.append) is None
    assert len(reports) == 1
    assert reports[0].startswith(f"{path}: ") and fragment in reports[0]
    assert "fresh state" in reports[0]


def test_corrupt_is_logged_by_default(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "wg0.state"
    path.write_text("garbage")
    with caplog.at_level(logging.WARNING, logger="wgcast.state"):
        assert load_state(path) is None
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert str(path) in caplog.records[0].getMessage()


def test_unreadable_is_reported(tmp_path: Path) -> None:
    reports: list[str] = []
    assert load_state(tmp_path, reports.append) is None  # a directory
    assert len(reports) == 1 and "cannot read" in reports[0]


def test_save_failure_raises_state_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StateError, match=r"cannot save state"):
        save_state(blocker / "wg0.state", State(RID, 1, 1.0))


def test_state_validates() -> None:
    with pytest.raises(ValueError):
        State(b"short", 1, 1.0)
    with pytest.raises(ValueError):
        State(RID, 70000, 1.0)
    with pytest.raises(ValueError):
        State(RID, 1, float("inf"))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash(tmp_path_factory: pytest.TempPathFactory,
                                     data: bytes) -> None:
    path = tmp_path_factory.mktemp("state") / "wg0.state"
    path.write_bytes(data)
    reports: list[str] = []
    result = load_state(path, reports.append)
    assert (result is None) == (len(reports) == 1)


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=8, max_size=8), st.integers(0, 0xFFFF),
       st.floats(min_value=0, max_value=4e9))
def test_round_trip_property(tmp_path_factory: pytest.TempPathFactory, rid: bytes,
                             seqno: int, saved: float) -> None:
    path = tmp_path_factory.mktemp("state") / "wg0.state"
    save_state(path, State(rid, seqno, saved))
    assert load_state(path) == State(rid, seqno, saved)
