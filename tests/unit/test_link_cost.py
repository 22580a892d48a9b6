"""How RTT samples become a link cost (babel/neighbour.py): spikes from a busy host's
scheduling move the cost far less than they did; a lasting change of latency shows."""

from __future__ import annotations

from wgcast.babel.neighbour import LinkCostParams, Neighbour, stamp

P = LinkCostParams()
UNCLIPPED = LinkCostParams(rtt_spike=1e9)  # the cost as it was before rtt_spike


def feed(nb: Neighbour, samples_ms: list[float], params: LinkCostParams = P,
         now: float = 100.0) -> float:
    for rtt in samples_ms:
        now += 0.6
        nb.on_rtt_sample(now, stamp(now - rtt / 1000.0), 0, 0, params.rtt_alpha, params)
    return now


def test_boot_spikes_do_not_inflate_the_cost() -> None:
    # A lab's boot: one sample in three is 30x the link's 3 ms.
    boot = [90.0 if i % 3 == 2 else 3.0 for i in range(30)]
    nb, plain = Neighbour("b"), Neighbour("c")
    feed(nb, boot)
    feed(plain, boot, UNCLIPPED)
    assert nb.cost_rtt_ms is not None and nb.cost_rtt_ms < 7.0
    assert plain.cost_rtt_ms is not None and plain.cost_rtt_ms > 25.0


def test_one_spike_leaves_a_settled_cost_alone() -> None:
    for params, moves in ((P, False), (UNCLIPPED, True)):
        nb = Neighbour("b")
        now = feed(nb, [3.0] * 40, params)
        cost = nb.own_cost(params)
        feed(nb, [3.0, 100.0, 3.0], params, now)
        assert (nb.own_cost(params) != cost) is moves


def test_a_lasting_rise_of_latency_shows() -> None:
    nb = Neighbour("b")
    now = feed(nb, [3.0] * 40)
    feed(nb, [50.0] * (P.rtt_window + 100), P, now)
    assert nb.cost_rtt_ms is not None and nb.cost_rtt_ms > 25.0
