"""The lab demo's conclusions on recorded probe data (no lab): who moved and who is a
bystander (noise floor), the physical floor from link delays, timelines on one clock."""

from __future__ import annotations

import itertools
from array import array
from pathlib import Path
from typing import Any

import pytest

from wgcast.lab import demo_report as report
from wgcast.lab.prober import analyse
from wgcast.topology import Link, Topology

# line:5, one-way delays per link (ms): n1-n2 10, n2-n3 8, n3-n4 14, n4-n5 9.
LINE = Topology(nodes=["n1", "n2", "n3", "n4", "n5"], links=[
    Link("n1", "n2", 10.0, id=0), Link("n2", "n3", 8.0, id=1),
    Link("n3", "n4", 14.0, id=2), Link("n4", "n5", 9.0, id=3)], spec="line:5")


def _probe(answers: list[str | None]) -> dict[str, Any]:
    """A prober result (the prober's own analysis) for one answer (or None) per ms."""
    names = sorted({a for a in answers if a})
    n = len(answers)
    node_of = array("h", [names.index(a) if a else -1 for a in answers])
    return analyse(n, 1.0, array("q", [k * 1_000_000 for k in range(n)]), node_of,
                   array("i", [500] * n), names)


def _client(answers: list[str | None], before: str, fail_at: float) -> dict[str, Any]:
    r = _probe(answers)
    segs = r["timeline"]
    after = segs[-1]["node"]
    v: dict[str, Any] = {"outage_ms": r["outage_ms"], "lost": r["lost"], "before": before,
                         "after": after, "fail_at_ms": fail_at, "segments": segs}
    v["moved"] = bool(report.moved_clients({"x": v}, "n5"))
    v["timeline"] = report.timeline(segs, fail_at)
    return v


def test_floor_service_kill_on_a_line() -> None:
    # n4 turns itself: the queries in flight to n5 (9) plus the retraction's trip (9).
    f4 = report.physical_floor(LINE, "n5", "n4", "n1", "service")
    assert f4 is not None
    assert (f4.detected_at, f4.turn_at, f4.one_way_ms, f4.floor_ms) == ("n5", "n4", 9, 18)
    f3 = report.physical_floor(LINE, "n5", "n3", "n1", "service")
    assert f3 is not None and (f3.one_way_ms, f3.floor_ms) == (23, 46)


def test_distance_vector_floor_adds_the_round_trip_to_the_node_that_turns() -> None:
    # The lab's line:5 (seed 7), rounded: n5 serves n3 and n4. n4 next to a killed n5 has
    # no route to n1 (n3 routes through n4: poisoned) until n3 heard the news (22 from
    # n5) and its route to n1 came back (14): 8 in flight + 36, where physics allows 16.
    # n3 turns itself: the same as physics.
    line = Topology(nodes=["n1", "n2", "n3", "n4", "n5"], links=[
        Link("n1", "n2", 18.0, id=0), Link("n2", "n3", 12.0, id=1),
        Link("n3", "n4", 14.0, id=2), Link("n4", "n5", 8.0, id=3)], spec="line:5")
    f4 = report.physical_floor(line, "n5", "n4", "n1", "service")
    f3 = report.physical_floor(line, "n5", "n3", "n1", "service")
    assert f4 is not None and f3 is not None
    assert (f4.floor_ms, f4.dv_floor_ms) == (16, 44)
    assert f3.dv_floor_ms == f3.floor_ms == 44
    # In LINE, n3 is nearer n1: it announces n1 to n4 already, and n4 turns itself.
    f = report.physical_floor(LINE, "n5", "n4", "n1", "service")
    assert f is not None and f.dv_floor_ms == f.floor_ms == 18
    f = report.physical_floor(line, "n5", "n4", "n1", "drain")
    assert f is not None and f.dv_floor_ms == 0


def test_floor_node_cut_is_detected_by_the_neighbour() -> None:
    f3 = report.physical_floor(LINE, "n5", "n3", "n1", "node")
    assert f3 is not None
    # n4 notices (timers are not physics): 23 ms in flight + 14 ms n4 -> n3.
    assert (f3.detected_at, f3.signal_ms, f3.floor_ms) == ("n4", 14, 37)


def test_floor_where_paths_part_after_the_client() -> None:
    # A star-ish mesh: c reaches both instances through m; the turn happens at m.
    topo = Topology(nodes=["c", "m", "a", "b"], links=[
        Link("c", "m", 5.0, id=0), Link("m", "a", 3.0, id=1), Link("m", "b", 20.0, id=2)])
    f = report.physical_floor(topo, "a", "c", "b", "service")
    assert f is not None
    assert (f.turn_at, f.in_flight_ms, f.signal_ms, f.client_to_turn_ms) == ("m", 8, 3, 5)
    assert f.floor_ms == 6  # 2 x (m -> a): what the client's own distance cannot add


def test_graceful_failures_have_a_zero_floor_and_no_instance_no_floor() -> None:
    f = report.physical_floor(LINE, "n5", "n4", "n1", "drain")
    assert f is not None and f.floor_ms == 0
    assert report.physical_floor(LINE, "n5", "n4", None, "service") is None


def _recorded_run(bystander_loses: bool) -> dict[str, Any]:
    fail = 300.0
    n4: list[str | None] = ["n5"] * 300 + [None] * 25 + ["n1"] * 175
    n3: list[str | None] = ["n5"] * 290 + [None] * 60 + ["n1"] * 150
    n2: list[str | None] = ["n1"] * 500
    if bystander_loses:
        n2[100:102] = [None, None]  # an isolated loss: the lab's own noise
    run = {"per_client": {"n2": _client(n2, "n1", fail), "n3": _client(n3, "n5", fail),
                          "n4": _client(n4, "n5", fail)}}
    for c in ("n3", "n4"):  # n3 loses 10 ms before the failure: its queries in flight
        f = report.physical_floor(LINE, "n5", c, "n1", "service")
        assert f is not None
        run["per_client"][c]["floor"] = f.as_dict()
    return run


def test_bystanders_and_noise_floor() -> None:
    clean = _recorded_run(bystander_loses=False)
    assert report.moved_clients(clean["per_client"], "n5") == ["n3", "n4"]
    nf = report.noise_floor([clean], "n5")
    assert nf["bystanders"] == ["n2"] and nf["lost"] == 0 and not nf["noisy"]
    noisy = _recorded_run(bystander_loses=True)
    nf = report.noise_floor([clean, noisy], "n5")
    assert nf["noisy"] and nf["lost"] == 2 and nf["lost_by_client"] == {"n2": 2}
    assert nf["max_outage_ms"] == 3.0


def test_timeline_on_the_failure_clock_without_gaps() -> None:
    run = _recorded_run(bystander_loses=True)
    for v in run["per_client"].values():
        tl = v["timeline"]
        assert tl[0]["from_ms"] == -300.0 and tl[-1]["to_ms"] == 200.0
        for a, b in itertools.pairwise(tl):
            assert a["to_ms"] == b["from_ms"]  # contiguous: every query in one segment
        assert sum(s["lost"] for s in tl) == v["lost"]
    by = run["per_client"]["n2"]["timeline"]
    assert [(s["node"], s["lost"]) for s in by] == [("n1", 2)]  # folded, counted
    n4 = run["per_client"]["n4"]["timeline"]
    assert [(s["node"], s["from_ms"], s["to_ms"]) for s in n4] == [
        ("n5", -300.0, 0.0), (None, 0.0, 25.0), ("n1", 25.0, 200.0)]
    assert "none +0.0..+25.0 (25 lost)" in report.format_timeline(n4)


def test_plot_svg_and_png(tmp_path: Path) -> None:
    run = _recorded_run(bystander_loses=True)
    run["per_client"]["n4"]["floor"] = {"floor_ms": 18.0}
    svg = report.write_plot(str(tmp_path / "who.svg"), [run], "recorded")
    text = Path(svg).read_text()
    assert text.startswith("<svg") and text.count("<rect") == 7
    assert "n4 (moved)" in text and "n2 (bystander)" in text
    pytest.importorskip("matplotlib")
    png = report.write_plot(str(tmp_path / "who.png"), [run], "recorded")
    assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_loss_before_the_failure_could_reach_a_moved_client_is_noise() -> None:
    run = _recorded_run(bystander_loses=False)
    # n5 stalled 100 ms before the cut
    n4: list[str | None] = ["n5"] * 200 + [None] * 125 + ["n1"] * 175
    run["per_client"]["n4"] = _client(n4, "n5", 300.0)
    run["per_client"]["n4"]["floor"] = {"in_flight_ms": 9.0}
    nf = report.noise_floor([run], "n5")
    assert nf["lost"] == 0  # the bystander is clean
    assert nf["noisy"] and nf["moved_lost_before_failure"] == {"n4": 90}  # -100 .. -10


def _ev(t_ms: float, kind: str, **kw: Any) -> dict[str, Any]:
    return {"t": 100.0 + t_ms / 1000, "kind": kind, **kw}


def test_breakdown_follows_the_news_hop_by_hop() -> None:
    """n5's service dies (t = 100 s): n5 retracts, n4 loses its route, n3 moves to n2
    and n4 follows n3: the breakdown of n4 reads the steps from the traces, in ms."""
    traces = {
        "n5": [_ev(-500, "selected", neighbour="<local>"),
               _ev(2, "detected", note="last member gone (connection closed)"),
               _ev(2.5, "retracted"), _ev(3, "update_sent", metric=0xFFFF)],
        "n4": [_ev(12, "update_received", neighbour="n5", metric=0xFFFF),
               _ev(12.2, "selected"), _ev(13, "applied"),
               _ev(60, "update_received", neighbour="n3", metric=300),
               _ev(60.1, "selected", neighbour="n3"), _ev(60.2, "update_sent", metric=400),
               _ev(61.5, "applied", neighbour="n3", note="device 1.0 ms")],
        "n3": [_ev(27, "update_received", neighbour="n4", metric=0xFFFF),
               _ev(27.1, "selected"), _ev(45, "selected", neighbour="n2"),
               _ev(45.2, "update_sent", metric=300), _ev(46, "applied", neighbour="n2")],
        "n2": [],
    }
    b = report.breakdown(traces, LINE, "n5", "n4", "n1", "service", 100.0, 70.0)
    assert b["detected_at"] == "n5" and b["detected_ms"] == pytest.approx(2.0)
    assert b["first_update_sent_ms"] == pytest.approx(3.0)
    hops = {h["node"]: h for h in b["hops"]}
    assert list(hops) == ["n4", "n3"]  # n2's selection did not change: not a hop
    assert hops["n4"]["update_received_ms"] == pytest.approx(12.0)
    assert hops["n4"]["no_route_ms"] == pytest.approx(12.2)
    assert hops["n4"]["selected_via"] == "n3" and hops["n4"]["applied_ms"] == pytest.approx(61.5)
    assert hops["n3"]["selected_ms"] == pytest.approx(45.0)
    assert b["ready_ms"] == pytest.approx(61.5) and b["first_answer_ms"] == 70.0
    line = report.format_breakdown(b)
    assert "n3 heard +27.0 from n4 no route +27.1 selected +45.0 via n2" in line
    assert line.endswith("first answer +70.0 ms")


def test_trace_noise_flags_a_starved_daemon() -> None:
    quiet = {"n4": [_ev(1, "selected", neighbour="n3")]}
    ok = {"reason": "draining", "start_ms": 3.0}
    assert report.trace_noise(quiet, "drain", ok) == []
    starved = {"n3": [_ev(400, "neighbour_down", neighbour="n4")]}
    assert report.trace_noise(starved, "drain", ok) == ["n3 declared n4 dead"]
    early = {"reason": "unhealthy", "start_ms": -99.0}
    assert "not by the failure" in report.trace_noise(quiet, "drain", early)[0]
    assert report.trace_noise(starved, "node", None) == []  # a node cut kills neighbours
    runs = [{"per_client": {}, "noise_signs": ["n3 declared n4 dead"]}]
    assert report.noise_floor(runs, "n5")["noisy"] is True


def test_losses_after_the_move_and_a_starved_apply_are_noise() -> None:
    tl: list[dict[str, Any]] = [
          {"from_ms": -700.0, "to_ms": 0.4, "node": "n5", "lost": 0},
          {"from_ms": 0.4, "to_ms": 90.0, "node": None, "lost": 90},
          {"from_ms": 90.0, "to_ms": 500.0, "node": "n1", "lost": 3},
          {"from_ms": 500.0, "to_ms": 600.0, "node": None, "lost": 100},
          {"from_ms": 600.0, "to_ms": 900.0, "node": "n1", "lost": 0}]
    assert report.lost_after_move(tl, "n1") == 103
    assert report.lost_after_move(tl[:2], "n1") == 0
    slow = {"n3": [_ev(300, "applied", neighbour="n2", note="waited 845.4 ms, device 8.4 ms")]}
    assert report.trace_noise(slow, "drain", None) == [
        "n3's data plane waited 845 ms to apply (starved)"]
    fine = {"n3": [_ev(300, "applied", neighbour="n2", note="waited 0.4 ms, device 1 ms")]}
    assert report.trace_noise(fine, "service", None) == []
