"""The daemon's WireGuard rx counters as signs of life (daemon/rx_feed.py), and what
the engine does with them (`Node.heard`)."""

from __future__ import annotations

from wgcast.daemon.rx_feed import RxFeed


def test_a_counter_that_moved_means_heard_after_the_previous_read() -> None:
    feed = RxFeed()
    assert feed.observe(10.0, {"a": 100, "b": 50}) == []  # first read: nothing to compare
    assert feed.observe(12.0, {"a": 180, "b": 50}) == [("a", 10.0)]
    assert feed.observe(14.0, {"a": 180, "b": 90}) == [("b", 12.0)]


def test_a_counter_that_went_down_or_a_peer_that_left_starts_again() -> None:
    feed = RxFeed()
    feed.observe(1.0, {"a": 500})
    assert feed.observe(2.0, {"a": 20}) == []  # removed and added back: reset counter
    assert feed.observe(3.0, {"a": 30}) == [("a", 2.0)]
    assert feed.observe(4.0, {}) == []
    assert feed.observe(5.0, {"a": 40}) == []  # back: a new first read
