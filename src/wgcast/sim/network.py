"""Many engines in virtual time: the simulator's driver.

One heap of (time, seq, action). Each link direction is FIFO with its own delay, jitter
and loss; a node's timer is whatever its engine's `next_deadline()` says. After every
delivered packet or timer, the node's events update a forwarding table (`fib`) and an
observer (the invariant checker) sees each route change as it happens.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from wgcast.babel.engine import Node, NodeConfig
from wgcast.babel.events import LOCAL, RouteSelected
from wgcast.babel.wire import Prefix
from wgcast.topology import Topology

RouteObserver = Callable[[float, str, Prefix, str | None], None]


@dataclass(slots=True)
class LinkState:
    """One direction of a link."""

    delay: float
    jitter: float
    loss: float
    up: bool = True
    last_arrival: float = 0.0


@dataclass(slots=True)
class Stats:
    packets: int = 0
    bytes: int = 0
    delivered: int = 0
    dropped: int = 0
    timers: int = 0


@dataclass
class SimNetwork:
    """Nodes of a topology running Babel engines over emulated links."""

    topology: Topology
    make_config: Callable[[str], NodeConfig]
    seed: int = 0
    #: Per-packet processing time added on receive (seconds): models a node's CPU.
    processing: float = 0.0
    now: float = 0.0
    nodes: dict[str, Node] = field(default_factory=dict)
    alive: set[str] = field(default_factory=set)
    fib: dict[str, dict[Prefix, str | None]] = field(default_factory=dict)
    links: dict[tuple[str, str], LinkState] = field(default_factory=dict)
    stats: Stats = field(default_factory=Stats)
    observers: list[RouteObserver] = field(default_factory=list)
    last_change: float = 0.0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self._heap: list[tuple[float, int, int, str, str, bytes]] = []
        self._seq = 0
        self._timer_at: dict[str, float | None] = {}
        for link in self.topology.links:
            for a, b in ((link.a, link.b), (link.b, link.a)):
                # Parallel links collapse to the fastest: one neighbour per peer.
                old = self.links.get((a, b))
                if old is None or link.delay_ms / 1000 < old.delay:
                    self.links[(a, b)] = LinkState(link.delay_ms / 1000, link.jitter_ms / 1000,
                                                   link.loss)
        for name in self.topology.nodes:
            self.start(name)

    # ------------------------------------------------------------ node life

    def start(self, name: str) -> None:
        node = Node(self.make_config(name), self.now)
        for (a, b) in self.links:
            if a == name:
                node.add_neighbour(b)
        self.nodes[name] = node
        self.alive.add(name)
        self.fib[name] = {}
        self._after(name)

    def crash(self, name: str) -> None:
        """The node stops dead: no retractions, its neighbours must notice the silence."""
        self.alive.discard(name)
        self._timer_at[name] = None
        for prefix in list(self.fib[name]):
            self._set_route(name, prefix, None)

    # ------------------------------------------------------------ links

    def set_link(self, a: str, b: str, up: bool) -> None:
        self.links[(a, b)].up = up
        self.links[(b, a)].up = up

    # ------------------------------------------------------------ scheduling

    def _push(self, t: float, kind: int, node: str, src: str = "", data: bytes = b"") -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, kind, node, src, data))

    def _after(self, name: str) -> None:
        """Collect a node's output: datagrams onto links, events into the FIB, next timer."""
        node = self.nodes[name]
        for dst, data in node.datagrams_to_send():
            self.stats.packets += 1
            self.stats.bytes += len(data)
            link = self.links[(name, dst)]
            if not link.up or (link.loss and self.rng.random() < link.loss):
                self.stats.dropped += 1
                continue
            jitter = self.rng.uniform(-link.jitter, link.jitter) if link.jitter else 0.0
            t = max(self.now + max(0.0, link.delay + jitter), link.last_arrival)
            link.last_arrival = t
            self._push(t, 1, dst, name, data)
        while (ev := node.next_event()) is not None:
            if isinstance(ev, RouteSelected):
                self._set_route(name, ev.prefix, ev.via)
        deadline = node.next_deadline()
        if deadline is not None:
            at = max(deadline, self.now)
            if at != self._timer_at.get(name):
                self._timer_at[name] = at
                self._push(at, 0, name)

    def _set_route(self, name: str, prefix: Prefix, via: str | None) -> None:
        fib = self.fib[name]
        if via is None:
            fib.pop(prefix, None)
        else:
            fib[prefix] = via
        self.last_change = self.now
        for obs in self.observers:
            obs(self.now, name, prefix, via)

    def step(self) -> bool:
        """Run the next action; False when nothing is left to do."""
        while self._heap:
            t, _, kind, name, src, data = heapq.heappop(self._heap)
            if name not in self.alive:
                continue
            if kind == 0:
                if self._timer_at.get(name) != t:
                    continue  # superseded by a later schedule
                self.now = max(self.now, t)
                self._timer_at[name] = None
                self.stats.timers += 1
                self.nodes[name].handle_timer(self.now)
            else:
                self.now = max(self.now, t + self.processing)
                self.stats.delivered += 1
                self.nodes[name].receive(self.now, src, data)
            self._after(name)
            return True
        return False

    def run_until(self, t_end: float, max_steps: int = 50_000_000) -> None:
        steps = 0
        while self._heap and self._heap[0][0] <= t_end and steps < max_steps:
            self.step()
            steps += 1
        self.now = max(self.now, t_end)

    # ------------------------------------------------------------ helpers

    def originate(self, name: str, prefix: Prefix, metric: int = 0) -> None:
        self.nodes[name].originate(prefix, metric, now=self.now)
        self._after(name)

    def retract(self, name: str, prefix: Prefix) -> None:
        self.nodes[name].retract(prefix, now=self.now)
        self._after(name)

    def next_hop(self, name: str, prefix: Prefix) -> str | None:
        return self.fib[name].get(prefix)

    def path(self, name: str, prefix: Prefix, limit: int = 10_000) -> tuple[list[str], str]:
        """Follow next hops: (nodes visited, 'local' | 'none' | 'loop' | 'dead')."""
        seen: list[str] = [name]
        visited = {name}
        cur = name
        for _ in range(limit):
            via = self.fib[cur].get(prefix)
            if via is None:
                return seen, "none"
            if via == LOCAL:
                return seen, "local"
            if via not in self.alive:
                return seen, "dead"
            if via in visited:
                seen.append(via)
                return seen, "loop"
            seen.append(via)
            visited.add(via)
            cur = via
        return seen, "loop"
