"""Multicast Hello streams: one Hello sequence per LAN interface, shared by its neighbours.

On a plain LAN (daemon/lan.py) every RFC 8966 speaker sends one stream of multicast
Hellos to ff02::1:6, each Hello followed by an IHU for every neighbour it hears on that
interface (addressed to it: AE 3, its link-local address), which is how babeld, BIRD and
FRR find each other and how two wgcast nodes on one LAN find each other. A receiver
tracks the Hello seqno per source address, so a node must not also send each neighbour
its own Hello stream from the same address: the members of a stream get no Hellos of
their own (the engine redirects them here), only the stream's.

Sans-IO like the rest of the engine: `Node` owns one `HelloStreams` and calls it with
its own tables; the stream's packets go out through the engine's writers under the
stream's id, which the driver sends to ff02::1:6 on the interface.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from wgcast.babel.neighbour import LinkCostParams, Neighbour, stamp
from wgcast.babel.source import seqno_plus
from wgcast.babel.wire import (
    AE_IPV6,
    AE_LL,
    AE_WILDCARD,
    IHU,
    Hello,
    PacketWriter,
    Timestamp,
    centiseconds,
)

_LL_PREFIX = bytes.fromhex("fe80000000000000")
_NEVER = float("inf")


@dataclass(slots=True)
class HelloStream:
    """One interface's Hello sequence: our address there, its members, its next Hello."""

    sid: str
    #: Our own IPv6 address on the interface (16 bytes): IHUs addressed to another
    #: address are for another neighbour of the sender.
    address: bytes
    seqno: int = 0
    next_at: float = 0.0
    #: Neighbour id -> its address on the interface (16 bytes), in the order heard.
    members: dict[str, bytes] = field(default_factory=dict)


def ihu_address(address: bytes) -> tuple[int, bytes]:
    """(AE, address field) of an IHU for `address`: AE 3 for a link-local address (only
    the interface id on the wire), as babeld sends it; AE 2 otherwise."""
    if address[:8] == _LL_PREFIX:
        return AE_LL, address[8:]
    return AE_IPV6, address


def ihu_is_for(own: bytes, ae: int, field_: bytes) -> bool:
    """Is an IHU with this address for the node whose address is `own`? A wildcard one
    is for whoever receives it (a unicast packet)."""
    if ae == AE_WILDCARD:
        return True
    if ae == AE_LL:
        return own[:8] == _LL_PREFIX and own[8:] == field_
    if ae == AE_IPV6:
        return own == field_
    return False


class HelloStreams:
    """The streams of one node and which neighbour belongs to which."""

    __slots__ = ("member_of", "streams")

    def __init__(self) -> None:
        self.streams: dict[str, HelloStream] = {}
        #: Neighbour id -> the id of its stream.
        self.member_of: dict[str, str] = {}

    def own_address(self, nid: str) -> bytes | None:
        """Our address on the interface where `nid` is (None: not a stream member)."""
        sid = self.member_of.get(nid)
        return None if sid is None else self.streams[sid].address

    def leave(self, nid: str) -> None:
        sid = self.member_of.pop(nid, None)
        if sid is not None:
            self.streams[sid].members.pop(nid, None)

    def next_deadline(self) -> float:
        best = _NEVER
        for st in self.streams.values():
            if st.next_at < best:
                best = st.next_at
        return best

    def send(self, st: HelloStream, w: PacketWriter, now: float, interval: float,
             neighbours: Mapping[str, Neighbour], link: LinkCostParams,
             own_cost: dict[str, int]) -> None:
        """One Hello of the stream, then an IHU for every member heard (our view of the
        link cost, the echo of its Hello timestamp), as one multicast packet (or a few,
        with many members: the first carries the Hello)."""
        st.seqno = seqno_plus(st.seqno)
        cs = centiseconds(interval)
        w.add(Hello(0, st.seqno, cs, (Timestamp((stamp(now),)),)))
        for nid, addr in st.members.items():
            nb = neighbours.get(nid)
            if nb is None or nb.last_hello is None:
                continue
            own = own_cost[nid] = nb.own_cost(link)
            echo = () if nb.peer_hello_stamp is None or nb.peer_hello_recv is None else \
                (Timestamp((nb.peer_hello_stamp, nb.peer_hello_recv)),)
            ae, field_ = ihu_address(addr)
            w.add(IHU(ae, own, cs, field_, echo))
            nb.last_sent_hello = now
