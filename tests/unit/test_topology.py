from __future__ import annotations

import networkx as nx
import pytest

from wgcast.topology import (
    Link,
    Topology,
    node_index,
    parse_loss,
    parse_ms,
    parse_ms_range,
    parse_node_list,
    parse_topology,
)


def pairs(t: Topology) -> list[tuple[str, str]]:
    return [(lk.a, lk.b) for lk in t.links]


def test_line() -> None:
    t = parse_topology("line:4")
    assert t.nodes == ["n1", "n2", "n3", "n4"]
    assert pairs(t) == [("n1", "n2"), ("n2", "n3"), ("n3", "n4")]
    assert [lk.id for lk in t.links] == [0, 1, 2]
    assert all(lk.delay_ms == 5.0 and lk.jitter_ms == 0 and lk.loss == 0 for lk in t.links)
    assert t.neighbours("n2") == ["n1", "n3"]
    assert t.index("n3") == 3
    assert t.is_connected()


def test_single_node_line() -> None:
    t = parse_topology("line:1")
    assert t.nodes == ["n1"] and t.links == []


def test_ring() -> None:
    t = parse_topology("ring:5")
    assert len(t.links) == 5
    g = t.simple_graph()
    assert all(d == 2 for _, d in g.degree())
    assert nx.cycle_basis(g)


def test_full() -> None:
    t = parse_topology("full:5")
    assert len(t.links) == 10
    assert all(d == 4 for _, d in t.simple_graph().degree())


def test_grid_wxh() -> None:
    t = parse_topology("grid:3x2")
    assert len(t.nodes) == 6
    # 2 rows of 2 horizontal links + 3 vertical links
    assert len(t.links) == 7
    assert ("n1", "n2") in pairs(t) and ("n1", "n4") in pairs(t)
    assert ("n3", "n4") not in pairs(t)  # no wrap-around
    assert t.is_connected()


@pytest.mark.parametrize("n", [1, 2, 5, 7, 10, 16, 17])
def test_grid_n_near_square(n: int) -> None:
    t = parse_topology(f"grid:{n}")
    assert len(t.nodes) == n
    assert t.is_connected()
    assert max((d for _, d in t.simple_graph().degree()), default=0) <= 4


@pytest.mark.parametrize(("n", "d"), [(10, 3), (9, 3), (20, 4), (50, 2), (5, 1), (30, 5)])
def test_random_connected_and_degree(n: int, d: int) -> None:
    t = parse_topology(f"random:{n}:{d}", seed=7)
    g = t.simple_graph()
    assert nx.is_connected(g)
    assert g.number_of_nodes() == n
    avg = 2 * g.number_of_edges() / n
    assert abs(avg - d) <= 1.0 or d == 1
    assert len(pairs(t)) == len(set(pairs(t)))  # no duplicate links


def test_random_seeded() -> None:
    a = parse_topology("random:30:3", delay="2-20ms", seed=42)
    b = parse_topology("random:30:3", delay="2-20ms", seed=42)
    c = parse_topology("random:30:3", delay="2-20ms", seed=43)
    assert a.links == b.links
    assert a.links != c.links


def test_dual() -> None:
    t = parse_topology("dual:3", delay="10ms")
    assert len(t.links) == 3
    between = t.links_between("n1", "n2")
    assert len(between) == 2
    assert between[0].id != between[1].id
    assert between[0].delay_ms == 10.0 and between[1].delay_ms == 20.0
    assert t.neighbours("n1") == ["n2"]
    g = t.graph()
    assert g.number_of_edges("n1", "n2") == 2
    # the simple graph keeps the faster of the two parallel links
    assert t.simple_graph()["n1"]["n2"]["delay_ms"] == 10.0


def test_dual_zero_delay_still_differs() -> None:
    t = parse_topology("dual:2", delay="0ms")
    d = sorted(lk.delay_ms for lk in t.links_between("n1", "n2"))
    assert d == [0.0, 5.0]


def test_delay_range_drawn_and_seeded() -> None:
    t = parse_topology("line:50", delay="2-20ms", jitter="1ms", loss="1%", seed=3)
    ds = [lk.delay_ms for lk in t.links]
    assert all(2.0 <= x <= 20.0 for x in ds)
    assert len(set(ds)) > 10
    assert all(lk.jitter_ms == 1.0 and lk.loss == 0.01 for lk in t.links)
    assert parse_topology("line:50", delay="2-20ms", seed=3).links[0].delay_ms == ds[0]
    # the shape of a random graph does not depend on the delay options
    r1 = parse_topology("random:20:3", delay="5ms", seed=9)
    r2 = parse_topology("random:20:3", delay="1-50ms", seed=9)
    assert pairs(r1) == pairs(r2)


def test_durations() -> None:
    assert parse_ms("5ms") == 5.0
    assert parse_ms("1.5s") == 1500.0
    assert parse_ms("250us") == 0.25
    assert parse_ms("7") == 7.0
    assert parse_ms(3) == 3.0
    assert parse_ms_range("2-20ms") == (2.0, 20.0)
    assert parse_ms_range("2ms-1s") == (2.0, 1000.0)
    assert parse_ms_range("5ms") == (5.0, 5.0)
    assert parse_ms_range(0) == (0.0, 0.0)
    assert parse_loss("1%") == 0.01
    assert parse_loss("0.5") == 0.5
    assert parse_loss(0) == 0.0


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("line", "expected KIND:ARGS"),
        ("line:", "expected KIND:ARGS"),
        ("line:x", "N must be an integer"),
        ("line:0", "at least 1"),
        ("ring:2", "at least 3"),
        ("dual:1", "at least 2"),
        ("grid:0x3", "grid sides"),
        ("grid:ax3", "W must be an integer"),
        ("random:10", "random:N:D"),
        ("random:10:10", "1 <= D < N"),
        ("random:10:0", "1 <= D < N"),
        ("star:5", "unknown kind 'star'"),
        ("line:100000", "at most"),
    ],
)
def test_bad_specs(spec: str, needle: str) -> None:
    with pytest.raises(ValueError, match=needle.replace("(", r"\(").replace("*", r"\*")) as e:
        parse_topology(spec)
    assert spec.strip() in str(e.value) or needle in str(e.value)


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        ({"delay": "fast"}, "delay: expected a duration"),
        ({"delay": "20-2ms"}, "low end above"),
        ({"delay": "-5ms"}, "both ends"),
        ({"delay": -1}, "non-negative"),
        ({"jitter": "1 hour"}, "jitter: expected a duration"),
        ({"loss": "2"}, "between 0 and 1"),
        ({"loss": "lots"}, "loss: expected a probability"),
    ],
)
def test_bad_options(kw: dict[str, object], needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        parse_topology("line:3", **kw)  # type: ignore[arg-type]


def test_link_helpers_and_roundtrip() -> None:
    t = parse_topology("dual:3", delay="1-9ms", seed=5)
    lk = t.link(2)
    assert lk.other("n1") == "n2"
    with pytest.raises(ValueError):
        lk.other("n3")
    with pytest.raises(ValueError, match="no link with id"):
        t.link(99)
    with pytest.raises(ValueError, match="unknown node"):
        t.index("n9")
    t2 = Topology.from_dict(t.to_dict())
    assert t2.nodes == t.nodes and t2.links == t.links and t2.spec == t.spec


def test_topology_validation() -> None:
    with pytest.raises(ValueError, match="unknown node"):
        Topology(nodes=["n1"], links=[Link("n1", "n2")])
    with pytest.raises(ValueError, match="self-loop"):
        Topology(nodes=["n1"], links=[Link("n1", "n1")])
    with pytest.raises(ValueError, match="duplicate"):
        Topology(nodes=["n1", "n1"], links=[])


def test_node_helpers() -> None:
    t = parse_topology("line:5")
    assert node_index("n12") == 12
    with pytest.raises(ValueError):
        node_index("x1")
    assert parse_node_list("n1, n5,,n1", t) == ["n1", "n5"]
    assert parse_node_list("", t) == []
    with pytest.raises(ValueError, match="unknown node"):
        parse_node_list("n1,n6", t)
