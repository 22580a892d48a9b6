"""Many engines in virtual time: the simulator's driver.

One heap of (time, seq, action). Each link direction is FIFO with its own delay, jitter
and loss; a node's timer is whatever its engine's `next_deadline()` says. After every
delivered packet or timer, the node's events update a forwarding table (`fib`) and an
observer (the invariant checker) sees each route change as it happens.

Faults: `crash` stops a node dead (its in-flight timers are void; packets that arrive
while it is down are lost), `restart` boots a fresh engine with the same router-id (and,
if asked, the seqno it had persisted), `set_link` cuts or restores one link (packets in
flight on a cut link are lost), `partition`/`heal` do that for every link across a cut.
"""

from __future__ import annotations

import dataclasses
import gc
import heapq
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from wgcast.babel.engine import Node, NodeConfig
from wgcast.babel.events import LOCAL, RouteSelected, SeqnoChanged
from wgcast.babel.neighbour import link_tiebreak
from wgcast.prefix import Prefix
from wgcast.topology import Topology

#: observer(now, node, prefix, via): called after every route change.
RouteObserver = Callable[[float, str, Prefix, str | None], None]

_TIMER = 0
_PACKET = 1
#: gc thresholds while the network runs (see `SimNetwork.run_until`).
GC_THRESHOLDS = (100_000, 50, 1000)


@dataclass(slots=True)
class LinkState:
    """One direction of a link."""

    delay: float
    jitter: float
    loss: float
    up: bool = True
    last_arrival: float = 0.0


@dataclass(slots=True)
class Ticker:
    """A sampler on a fixed virtual-time grid: `callback(t)` at start, start + period, ...
    sees the state after every action up to t (see `SimNetwork.run_until`)."""

    period: float
    callback: Callable[[float], None]
    start: float
    fired: int = 0

    @property
    def next_at(self) -> float:
        return self.start + self.fired * self.period  # no drift from repeated additions


@dataclass(slots=True)
class Stats:
    packets: int = 0
    bytes: int = 0
    delivered: int = 0
    dropped: int = 0
    timers: int = 0
    route_changes: int = 0


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
    fib: dict[str, dict[Prefix, str]] = field(default_factory=dict)
    links: dict[tuple[str, str], LinkState] = field(default_factory=dict)
    stats: Stats = field(default_factory=Stats)
    observers: list[RouteObserver] = field(default_factory=list)
    #: Called after every delivered packet or timer (after its route changes).
    step_hooks: list[Callable[[], None]] = field(default_factory=list)
    last_change: float = 0.0
    #: Bumped when liveness, a link or an origin changes (not on route changes).
    epoch: int = 0
    #: Grid samplers, fired by run_until.
    tickers: list[Ticker] = field(default_factory=list)
    #: Last seqno each node reported (SeqnoChanged or at crash): its "state file".
    saved_seqno: dict[str, int] = field(default_factory=dict)
    #: Prefixes each node originates, restored when it restarts.
    originated: dict[str, dict[Prefix, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self._heap: list[tuple[float, int, int, str, str, bytes]] = []
        self._seq = 0
        #: Sequence number of the one valid timer entry of each node.
        self._timer_seq: dict[str, int] = {}
        self._timer_at: dict[str, float] = {}
        self.neighbours: dict[str, list[str]] = {n: [] for n in self.topology.nodes}
        for link in self.topology.links:
            for a, b in ((link.a, link.b), (link.b, link.a)):
                # Parallel links collapse to the fastest: one neighbour per peer.
                old = self.links.get((a, b))
                if old is None:
                    self.neighbours[a].append(b)
                if old is None or link.delay_ms / 1000 < old.delay:
                    self.links[(a, b)] = LinkState(link.delay_ms / 1000, link.jitter_ms / 1000,
                                                   link.loss)
        for name in self.topology.nodes:
            self.start(name)

    # ------------------------------------------------------------ node life

    def start(self, name: str, config: NodeConfig | None = None) -> None:
        """Boot a fresh engine for `name` (at the start, or after a crash)."""
        node = Node(config or self.make_config(name), self.now)
        self.epoch += 1
        for peer in self.neighbours[name]:
            # The link's tie-break from the two names, as the daemon does from two keys.
            node.add_neighbour(peer, tie=link_tiebreak(name.encode(), peer.encode()))
        self.nodes[name] = node
        self.alive.add(name)
        self.fib[name] = {}
        self.saved_seqno[name] = node.seqno
        self._timer_seq.pop(name, None)
        self._timer_at.pop(name, None)
        for prefix, metric in self.originated.get(name, {}).items():
            node.originate(prefix, metric, now=self.now)
        self._after(name)

    def crash(self, name: str) -> None:
        """The node stops dead: no retractions, its neighbours must notice the silence."""
        if name not in self.alive:
            return
        self.alive.discard(name)
        self.epoch += 1
        self._timer_seq.pop(name, None)
        self._timer_at.pop(name, None)
        for prefix in list(self.fib[name]):
            self._set_route(name, prefix, None)

    def restart(self, name: str, seqno: int | None = None) -> None:
        """Boot `name` again with the same router-id; `seqno` as read from its state file
        (None: the state file was lost, the node starts from its configured seqno)."""
        if name in self.alive:
            raise ValueError(f"{name} is running")
        cfg = self.make_config(name)
        if seqno is not None:
            cfg = dataclasses.replace(cfg, seqno=seqno & 0xFFFF)
        self.start(name, cfg)

    # ------------------------------------------------------------ links

    def set_link(self, a: str, b: str, up: bool) -> None:
        self.links[(a, b)].up = up
        self.links[(b, a)].up = up
        self.epoch += 1

    def link_up(self, a: str, b: str) -> bool:
        return self.links[(a, b)].up

    def cut(self, side: Iterable[str]) -> list[tuple[str, str]]:
        """The links with exactly one end in `side`."""
        s = set(side)
        return [(a, b) for (a, b) in self.links if a in s and b not in s]

    def partition(self, side: Iterable[str]) -> list[tuple[str, str]]:
        """Cut every link between `side` and the rest; returns the links cut."""
        cut = self.cut(side)
        for a, b in cut:
            self.set_link(a, b, False)
        return cut

    def heal(self, cut: Iterable[tuple[str, str]]) -> None:
        for a, b in cut:
            self.set_link(a, b, True)

    # ------------------------------------------------------------ scheduling

    def _push(self, t: float, kind: int, node: str, src: str = "", data: bytes = b"") -> int:
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, kind, node, src, data))
        return self._seq

    def _after(self, name: str) -> None:
        """Collect a node's output: datagrams onto links, events into the FIB, next timer."""
        node = self.nodes[name]
        now = self.now
        stats = self.stats
        out = node.datagrams_to_send()
        if out:
            links, rng, heap, seq = self.links, self.rng, self._heap, self._seq
            n_bytes = dropped = 0
            for dst, data in out:
                n_bytes += len(data)
                link = links[(name, dst)]
                if not link.up or (link.loss and rng.random() < link.loss):
                    dropped += 1
                    continue
                jitter = rng.uniform(-link.jitter, link.jitter) if link.jitter else 0.0
                t = now + link.delay + jitter
                if t < now:
                    t = now
                if t < link.last_arrival:
                    t = link.last_arrival  # FIFO: no reordering on one link
                link.last_arrival = t
                seq += 1  # _push, inline (one per datagram)
                heapq.heappush(heap, (t, seq, _PACKET, dst, name, data))
            self._seq = seq
            stats.packets += len(out)
            stats.bytes += n_bytes
            stats.dropped += dropped
        while (ev := node.next_event()) is not None:
            if isinstance(ev, RouteSelected):
                self._set_route(name, ev.prefix, ev.via)
            elif isinstance(ev, SeqnoChanged):
                self.saved_seqno[name] = ev.seqno
        deadline = node.next_deadline()
        if deadline is not None:
            at = deadline if deadline > now else now
            if at != self._timer_at.get(name):
                self._timer_at[name] = at
                self._timer_seq[name] = self._push(at, _TIMER, name)

    def _set_route(self, name: str, prefix: Prefix, via: str | None) -> None:
        fib = self.fib[name]
        if via is None:
            if fib.pop(prefix, None) is None:
                return
        else:
            if fib.get(prefix) == via:
                return
            fib[prefix] = via
        self.last_change = self.now
        self.stats.route_changes += 1
        for obs in self.observers:
            obs(self.now, name, prefix, via)

    def step(self) -> bool:
        """Run the next action; False when nothing is left to do."""
        heap = self._heap
        while heap:
            t, seq, kind, name, src, data = heapq.heappop(heap)
            if name not in self.alive:
                continue  # lost: the node is down
            if kind == _TIMER:
                if self._timer_seq.get(name) != seq:
                    continue  # superseded by a later schedule, or from a previous life
                if t > self.now:
                    self.now = t
                del self._timer_seq[name]
                del self._timer_at[name]
                self.stats.timers += 1
                self.nodes[name].handle_timer(self.now)
            else:
                if not self.links[(src, name)].up:
                    self.stats.dropped += 1
                    continue  # the link was cut while the packet was in flight
                t += self.processing
                if t > self.now:
                    self.now = t
                self.stats.delivered += 1
                self.nodes[name].receive(self.now, src, data)
            self._after(name)
            for hook in self.step_hooks:
                hook()
            return True
        return False

    def next_time(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def run_until(self, t_end: float, max_steps: int = 50_000_000) -> None:
        # The engines allocate a few small objects per route per packet and free them
        # (almost) all; the default GC thresholds rescan the million long-lived routes of
        # a large mesh over and over for little garbage (0-10% of a full:40 run, side by
        # side; costs ~16% peak memory on random:1000:6).
        saved = gc.get_threshold()
        gc.set_threshold(*GC_THRESHOLDS)
        try:
            self._run_until(t_end, max_steps)
        finally:
            gc.set_threshold(*saved)

    def _run_until(self, t_end: float, max_steps: int) -> None:
        steps = 0
        heap = self._heap
        if self.tickers:
            while heap and heap[0][0] <= t_end and steps < max_steps:
                self._tick(heap[0][0], inclusive=False)
                self.step()
                steps += 1
            self.now = max(self.now, t_end)
            self._tick(t_end, inclusive=True)
            return
        while heap and heap[0][0] <= t_end and steps < max_steps:
            self.step()
            steps += 1
        self.now = max(self.now, t_end)

    def _tick(self, t: float, inclusive: bool) -> None:
        """Fire every ticker's grid points before `t` (up to and including it when
        `inclusive`): the next action is at `t`, so the state is the one at those points."""
        for tk in list(self.tickers):
            at = tk.next_at
            while at < t or (inclusive and at == t):
                tk.callback(at)
                tk.fired += 1
                at = tk.next_at

    def settling(self) -> bool:
        """Does some engine still plan to reconsider a route (smoothing, source release)?"""
        nodes = self.nodes
        return any(nodes[n].settling() for n in self.alive)

    def run_until_quiet(self, quiet: float, deadline: float, check_every: float = 0.5) -> bool:
        """Run until no route changed for `quiet` seconds and no engine is still settling
        (True), or until `deadline` (False)."""
        while True:
            target = max(self.last_change + quiet, self.now + min(check_every, quiet))
            if target > deadline:
                self.run_until(deadline)
                return self.now - self.last_change >= quiet and not self.settling()
            self.run_until(target)
            if self.now - self.last_change >= quiet and not self.settling():
                return True

    # ------------------------------------------------------------ helpers

    def originate(self, name: str, prefix: Prefix, metric: int = 0) -> None:
        self.originated.setdefault(name, {})[prefix] = metric
        self.epoch += 1
        self.nodes[name].originate(prefix, metric, now=self.now)
        self._after(name)

    def retract(self, name: str, prefix: Prefix) -> None:
        self.originated.get(name, {}).pop(prefix, None)
        self.epoch += 1
        self.nodes[name].retract(prefix, now=self.now)
        self._after(name)

    def origins(self, prefix: Prefix) -> dict[str, int]:
        """Live nodes originating `prefix`, with their xroute metric."""
        return {n: m[prefix] for n, m in self.originated.items()
                if prefix in m and n in self.alive}

    def next_hop(self, name: str, prefix: Prefix) -> str | None:
        return self.fib[name].get(prefix)

    def path(self, name: str, prefix: Prefix, limit: int = 100_000) -> tuple[list[str], str]:
        """Follow next hops: (nodes visited, 'local' | 'none' | 'loop' | 'dead')."""
        seen: list[str] = [name]
        visited = {name}
        cur = name
        fib = self.fib
        alive = self.alive
        for _ in range(limit):
            via = fib[cur].get(prefix)
            if via is None:
                return seen, "none"
            if via == LOCAL:
                return seen, "local"
            if via not in alive or not self.links[(cur, via)].up:
                return seen, "dead"
            if via in visited:
                seen.append(via)
                return seen, "loop"
            seen.append(via)
            visited.add(via)
            cur = via
        return seen, "loop"
