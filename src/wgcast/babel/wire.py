"""Babel (RFC 8966) packet, TLV and sub-TLV codec: strict, bounded, sans-IO.

Two levels. The raw level (`decode_packet`/`encode_packet`) keeps every wire field,
including prefix compression and flags, so bytes round-trip exactly. The semantic level
(`resolve`, `PacketWriter`) carries the parser state of RFC 8966 section 4.5 (current
router-id, next hop, default prefixes) and gives the engine whole prefixes and router-ids.
Any byte string either decodes or raises RemoteProtocolError; nothing else escapes.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from wgcast.babel.errors import LocalProtocolError, RemoteProtocolError
from wgcast.prefix import Prefix

MAGIC = 42
VERSION = 2
HEADER_LEN = 4
PORT = 6696
INFINITY = 0xFFFF
#: Largest body we build: fits IPv6's minimum MTU (1280) minus IPv6 and UDP headers.
MAX_BODY = 1280 - 40 - 8 - HEADER_LEN

# TLV types
T_PAD1, T_PADN, T_ACKREQ, T_ACK, T_HELLO, T_IHU = 0, 1, 2, 3, 4, 5
T_ROUTERID, T_NEXTHOP, T_UPDATE, T_ROUTEREQ, T_SEQNOREQ = 6, 7, 8, 9, 10
#: wgcast's digest of what the sender announced to the receiver (quiet mode), from the
#: experimental TLV range (224-254): sent only to neighbours that announced S_QUIET.
T_DIGEST = 224
#: Digest flag: it ends a full update (the receiver may drop what the dump left out).
DIGEST_FULL = 0x0001
# Sub-TLV types
S_PAD1, S_PADN, S_TIMESTAMP = 0, 1, 3
#: wgcast's path tie-break (Update): from the experimental, non-mandatory range (112-126)
#: of RFC 8966's sub-TLV registry, so other Babel speakers ignore it.
S_TIEBREAK = 112
#: The origin's signature of an Update (docs/roster.md): same range, so babeld, BIRD and
#: FRR skip it (RFC 8966 section 4.4: a non-mandatory unknown sub-TLV is ignored).
S_ORIGIN_SIG = 113
#: wgcast's quiet-mode capability (Hello): "I do acknowledged incremental updates and
#: digests" (docs/architecture.md, quiet mode). Same range: other speakers ignore it.
S_QUIET = 114
MANDATORY = 0x80
# Address encodings
AE_WILDCARD, AE_IPV4, AE_IPV6, AE_LL, AE_V4V6 = 0, 1, 2, 3, 4
# Flags
HELLO_UNICAST = 0x8000
UPDATE_DEFAULT_PREFIX = 0x80
UPDATE_DEFAULT_ROUTER_ID = 0x40

_ADDR_LEN = {AE_WILDCARD: 0, AE_IPV4: 4, AE_IPV6: 16, AE_LL: 8, AE_V4V6: 4}
_MAX_PLEN = {AE_WILDCARD: 0, AE_IPV4: 32, AE_IPV6: 128, AE_LL: 128, AE_V4V6: 32}
_LL_PREFIX = bytes.fromhex("fe80000000000000")
#: Router-ids that must never be used (RFC 8966 section 4.6.7).
RESERVED_ROUTER_IDS = (bytes(8), b"\xff" * 8)
_KNOWN_SUBTLVS = (S_PAD1, S_PADN, S_TIMESTAMP, S_TIEBREAK, S_ORIGIN_SIG, S_QUIET)
#: Largest tie-break value: 64 bits on the wire.
MAX_TIEBREAK = (1 << 64) - 1



# ---------------------------------------------------------------- sub-TLVs


@dataclass(frozen=True, slots=True)
class SubPad1:
    """One byte of sub-TLV padding."""


@dataclass(frozen=True, slots=True)
class SubPadN:
    """Sub-TLV padding of `length` zero bytes."""

    length: int


@dataclass(frozen=True, slots=True)
class Timestamp:
    """RTT extension: one stamp in a Hello (send time), two in an IHU (echo, receive).

    Values are microseconds modulo 2**32, as babeld sends them.
    """

    stamps: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Tiebreak:
    """Path tie-break of an Update: the sum of the per-link tie-break values along the
    announcing node's selected path (0 at the origin).

    Two routes of equal metric are ordered by this sum. Every link's value is the same at
    both ends (a hash of the two public keys), so the order of two paths is the same seen
    from either end, and equal-cost shortest paths are unique and symmetric (see
    docs/architecture.md, "Source filter").
    """

    value: int


@dataclass(frozen=True, slots=True)
class OriginSig:
    """The origin's signature of an Update, carried unchanged hop by hop.

    Opaque here (1 to 255 bytes): the codec moves it, the driver's policy (wgcast.origin)
    gives it meaning and checks it; the engine never looks inside.
    """

    body: bytes


@dataclass(frozen=True, slots=True)
class QuietCap:
    """Hello sub-TLV: the sender does quiet mode (acknowledged incremental updates and
    digests instead of periodic full dumps). The body is kept as received (a later
    version may add to it) so that bytes round-trip."""

    body: bytes = b"\x01"


@dataclass(frozen=True, slots=True)
class UnknownSub:
    """A sub-TLV we do not understand; if mandatory, its TLV must be ignored."""

    type: int
    body: bytes

    @property
    def mandatory(self) -> bool:
        return bool(self.type & MANDATORY)


SubTLV = SubPad1 | SubPadN | Timestamp | Tiebreak | OriginSig | QuietCap | UnknownSub


# ---------------------------------------------------------------- TLVs


@dataclass(frozen=True, slots=True)
class Pad1:
    """One byte of padding."""


@dataclass(frozen=True, slots=True)
class PadN:
    """Padding: `length` zero bytes."""

    length: int


@dataclass(frozen=True, slots=True)
class AckReq:
    """Asks the receiver to send an Ack with `opaque` within `interval` centiseconds."""

    opaque: int
    interval: int
    subtlvs: tuple[SubTLV, ...] = ()


@dataclass(frozen=True, slots=True)
class Ack:
    """Answers an AckReq."""

    opaque: int
    subtlvs: tuple[SubTLV, ...] = ()


@dataclass(frozen=True, slots=True)
class Hello:
    """Hello: `interval` in centiseconds; we always send unicast Hellos over WireGuard."""

    flags: int
    seqno: int
    interval: int
    subtlvs: tuple[SubTLV, ...] = ()


@dataclass(frozen=True, slots=True)
class IHU:
    """I Heard You: the receive cost of the link as seen by the sender."""

    ae: int
    rxcost: int
    interval: int
    address: bytes = b""
    subtlvs: tuple[SubTLV, ...] = ()


@dataclass(frozen=True, slots=True)
class RouterId:
    """Sets the router-id of the following Updates (8 bytes)."""

    router_id: bytes
    subtlvs: tuple[SubTLV, ...] = ()


@dataclass(frozen=True, slots=True)
class NextHop:
    """Sets the next hop of the following Updates of the same family."""

    ae: int
    address: bytes
    subtlvs: tuple[SubTLV, ...] = ()


@dataclass(frozen=True, slots=True)
class Update:
    """Raw Update: `prefix` holds only the bytes on the wire (after `omitted`)."""

    ae: int
    flags: int
    plen: int
    omitted: int
    interval: int
    seqno: int
    metric: int
    prefix: bytes
    subtlvs: tuple[SubTLV, ...] = ()


@dataclass(frozen=True, slots=True)
class RouteRequest:
    """Asks for an update of one prefix, or of all (AE 0)."""

    ae: int
    plen: int
    prefix: bytes
    subtlvs: tuple[SubTLV, ...] = ()


@dataclass(frozen=True, slots=True)
class SeqnoRequest:
    """Asks the source `router_id` for a seqno at least `seqno`, forwarded hop by hop."""

    ae: int
    plen: int
    seqno: int
    hopcount: int
    router_id: bytes
    prefix: bytes
    subtlvs: tuple[SubTLV, ...] = ()


@dataclass(frozen=True, slots=True)
class Digest:
    """What the sender announced to us, summed up (quiet mode): `count` finite routes
    whose entry hashes (`wgcast.babel.quiet.entry_hash`) add up to `hash` modulo 2**64,
    as of the Update packet the sender sent us last with the AckReq `version`."""

    flags: int
    version: int
    count: int
    hash: int
    subtlvs: tuple[SubTLV, ...] = ()


@dataclass(frozen=True, slots=True)
class UnknownTLV:
    """A TLV type we do not know: kept for round-trip, ignored by the engine."""

    type: int
    body: bytes


TLV = (
    Pad1 | PadN | AckReq | Ack | Hello | IHU | RouterId | NextHop | Update | RouteRequest
    | SeqnoRequest | Digest | UnknownTLV
)


# ---------------------------------------------------------------- sub-TLV codec


def _decode_subtlvs(data: bytes, pos: int, end: int, in_ihu: bool) -> tuple[SubTLV, ...]:
    out: list[SubTLV] = []
    while pos < end:
        stype = data[pos]
        if stype == S_PAD1:
            out.append(SubPad1())
            pos += 1
            continue
        if pos + 2 > end:
            raise RemoteProtocolError("truncated sub-TLV header")
        slen = data[pos + 1]
        body_start = pos + 2
        pos = body_start + slen
        if pos > end:
            raise RemoteProtocolError(f"sub-TLV {stype} overruns its TLV")
        body = data[body_start:pos]
        if stype == S_PADN:
            out.append(SubPadN(slen))
        elif stype == S_TIMESTAMP:
            want = 8 if in_ihu else 4
            if slen != want:
                raise RemoteProtocolError(f"timestamp sub-TLV of {slen} bytes, expected {want}")
            out.append(Timestamp(struct.unpack(f"!{slen // 4}I", body)))
        elif stype == S_TIEBREAK:
            if slen != 8:
                raise RemoteProtocolError(f"tie-break sub-TLV of {slen} bytes, expected 8")
            out.append(Tiebreak(int.from_bytes(body, "big")))
        elif stype == S_ORIGIN_SIG:
            if slen == 0:
                raise RemoteProtocolError("empty origin signature sub-TLV")
            out.append(OriginSig(bytes(body)))
        elif stype == S_QUIET:
            out.append(QuietCap(bytes(body)))
        else:
            out.append(UnknownSub(stype, bytes(body)))
    return tuple(out)


def _encode_subtlvs(subtlvs: Iterable[SubTLV], out: bytearray, in_ihu: bool) -> None:
    for s in subtlvs:
        if isinstance(s, SubPad1):
            out.append(S_PAD1)
        elif isinstance(s, SubPadN):
            _check_u(s.length, 8, "sub-TLV PadN length")
            out += bytes((S_PADN, s.length)) + bytes(s.length)
        elif isinstance(s, Timestamp):
            want = 2 if in_ihu else 1
            if len(s.stamps) != want:
                raise LocalProtocolError(
                    f"timestamp sub-TLV with {len(s.stamps)} stamps, expected {want}"
                )
            for stamp in s.stamps:
                _check_u(stamp, 32, "timestamp")
            out += bytes((S_TIMESTAMP, 4 * len(s.stamps)))
            out += struct.pack(f"!{len(s.stamps)}I", *s.stamps)
        elif isinstance(s, Tiebreak):
            if not 0 <= s.value <= MAX_TIEBREAK:
                raise LocalProtocolError(f"tie-break {s.value} out of range")
            out += bytes((S_TIEBREAK, 8)) + s.value.to_bytes(8, "big")
        elif isinstance(s, OriginSig):
            if not 1 <= len(s.body) <= 255:
                raise LocalProtocolError(f"origin signature of {len(s.body)} bytes")
            out += bytes((S_ORIGIN_SIG, len(s.body))) + s.body
        elif isinstance(s, QuietCap):
            _check_u(len(s.body), 8, "quiet sub-TLV length")
            out += bytes((S_QUIET, len(s.body))) + s.body
        else:
            _check_u(s.type, 8, "sub-TLV type")
            if s.type in _KNOWN_SUBTLVS:
                raise LocalProtocolError(f"UnknownSub with the known type {s.type}")
            _check_u(len(s.body), 8, "sub-TLV length")
            out += bytes((s.type, len(s.body))) + s.body


# ---------------------------------------------------------------- TLV codec


def _prefix_len(ae: int, plen: int, omitted: int) -> int:
    """Bytes of prefix on the wire, or raise for an impossible combination."""
    if ae not in _ADDR_LEN:
        raise RemoteProtocolError(f"unknown address encoding {ae}")
    if plen > _MAX_PLEN[ae]:
        raise RemoteProtocolError(f"prefix length {plen} too long for AE {ae}")
    if ae == AE_WILDCARD:
        if plen or omitted:
            raise RemoteProtocolError("AE 0 with a prefix")
        return 0
    if ae == AE_LL:
        # The fe80::/64 half is implied: only the octets after it are on the wire.
        if omitted:
            raise RemoteProtocolError("AE 3 does not allow compression")
        if plen < 64:
            raise RemoteProtocolError(f"prefix length {plen} too short for AE 3")
        return (plen + 7) // 8 - 8
    full = (plen + 7) // 8
    if omitted > _ADDR_LEN[ae] or omitted > full:
        raise RemoteProtocolError(f"omitted {omitted} bytes of a /{plen} prefix")
    return full - omitted


# The Hello and IHU every neighbour sends five times a second, as wgcast sends them (a
# Timestamp sub-TLV, AE 0 for the IHU): fixed layouts, coded in one struct call each,
# byte for byte what the general code below does with them.
_HELLO_TS = struct.Struct("!BBHHHBBI")  # type, len 12, flags, seqno, interval, ts sub-TLV
_IHU_TS = struct.Struct("!BBBBHHBBII")  # type, len 16, AE 0, 0, rxcost, interval, ts x2
_HELLO_TS_BODY = struct.Struct("!HHH2xI")
_IHU_TS_BODY = struct.Struct("!2xHH2xII")


def _decode_tlv(ttype: int, data: bytes, pos: int, end: int) -> TLV:
    n = end - pos
    if ttype == T_HELLO and n == 12 and data[pos + 6] == S_TIMESTAMP and data[pos + 7] == 4:
        flags, seqno, interval, ts = _HELLO_TS_BODY.unpack_from(data, pos)
        return Hello(flags, seqno, interval, (Timestamp((ts,)),))
    if ttype == T_IHU and n == 16 and data[pos] == AE_WILDCARD and \
            data[pos + 6] == S_TIMESTAMP and data[pos + 7] == 8:
        rxcost, interval, t1, t2 = _IHU_TS_BODY.unpack_from(data, pos)
        return IHU(AE_WILDCARD, rxcost, interval, b"", (Timestamp((t1, t2)),))

    def need(k: int, what: str) -> None:
        if n < k:
            raise RemoteProtocolError(f"{what} TLV of {n} bytes, needs at least {k}")

    if ttype == T_PADN:
        return PadN(n)
    if ttype == T_ACKREQ:
        need(6, "AckReq")
        _, opaque, interval = struct.unpack_from("!HHH", data, pos)
        return AckReq(opaque, interval, _decode_subtlvs(data, pos + 6, end, False))
    if ttype == T_ACK:
        need(2, "Ack")
        (opaque,) = struct.unpack_from("!H", data, pos)
        return Ack(opaque, _decode_subtlvs(data, pos + 2, end, False))
    if ttype == T_HELLO:
        need(6, "Hello")
        flags, seqno, interval = struct.unpack_from("!HHH", data, pos)
        return Hello(flags, seqno, interval, _decode_subtlvs(data, pos + 6, end, False))
    if ttype == T_IHU:
        need(6, "IHU")
        ae, _, rxcost, interval = struct.unpack_from("!BBHH", data, pos)
        if ae not in _ADDR_LEN or ae == AE_V4V6:
            raise RemoteProtocolError(f"IHU with address encoding {ae}")
        alen = _ADDR_LEN[ae]
        need(6 + alen, "IHU")
        addr = bytes(data[pos + 6 : pos + 6 + alen])
        return IHU(ae, rxcost, interval, addr, _decode_subtlvs(data, pos + 6 + alen, end, True))
    if ttype == T_ROUTERID:
        need(10, "Router-Id")
        rid = bytes(data[pos + 2 : pos + 10])
        return RouterId(rid, _decode_subtlvs(data, pos + 10, end, False))
    if ttype == T_NEXTHOP:
        need(2, "Next Hop")
        ae = data[pos]
        if ae not in _ADDR_LEN or ae in (AE_WILDCARD, AE_V4V6):
            raise RemoteProtocolError(f"Next Hop with address encoding {ae}")
        alen = _ADDR_LEN[ae]
        need(2 + alen, "Next Hop")
        addr = bytes(data[pos + 2 : pos + 2 + alen])
        return NextHop(ae, addr, _decode_subtlvs(data, pos + 2 + alen, end, False))
    if ttype == T_UPDATE:
        need(10, "Update")
        ae, flags, plen, omitted, interval, seqno, metric = struct.unpack_from(
            "!BBBBHHH", data, pos
        )
        plen_bytes = _prefix_len(ae, plen, omitted)
        need(10 + plen_bytes, "Update")
        prefix = bytes(data[pos + 10 : pos + 10 + plen_bytes])
        subs = _decode_subtlvs(data, pos + 10 + plen_bytes, end, False)
        return Update(ae, flags, plen, omitted, interval, seqno, metric, prefix, subs)
    if ttype == T_ROUTEREQ:
        need(2, "Route Request")
        ae, plen = data[pos], data[pos + 1]
        plen_bytes = _prefix_len(ae, plen, 0)
        need(2 + plen_bytes, "Route Request")
        prefix = bytes(data[pos + 2 : pos + 2 + plen_bytes])
        subs = _decode_subtlvs(data, pos + 2 + plen_bytes, end, False)
        return RouteRequest(ae, plen, prefix, subs)
    if ttype == T_SEQNOREQ:
        need(14, "Seqno Request")
        ae, plen, seqno, hopcount = struct.unpack_from("!BBHB", data, pos)
        if ae == AE_WILDCARD:
            raise RemoteProtocolError("Seqno Request with AE 0")
        plen_bytes = _prefix_len(ae, plen, 0)
        need(14 + plen_bytes, "Seqno Request")
        rid = bytes(data[pos + 6 : pos + 14])
        prefix = bytes(data[pos + 14 : pos + 14 + plen_bytes])
        subs = _decode_subtlvs(data, pos + 14 + plen_bytes, end, False)
        return SeqnoRequest(ae, plen, seqno, hopcount, rid, prefix, subs)
    if ttype == T_DIGEST:
        need(16, "Digest")
        flags, version, count, digest = struct.unpack_from("!HHIQ", data, pos)
        return Digest(flags, version, count, digest, _decode_subtlvs(data, pos + 16, end, False))
    return UnknownTLV(ttype, bytes(data[pos:end]))


def decode_packet(data: bytes) -> list[TLV]:
    """Decode one Babel packet; trailing bytes after the body (trailer) are ignored."""
    if len(data) < HEADER_LEN:
        raise RemoteProtocolError(f"packet of {len(data)} bytes, shorter than a header")
    if data[0] != MAGIC:
        raise RemoteProtocolError(f"bad magic {data[0]}")
    if data[1] != VERSION:
        raise RemoteProtocolError(f"unsupported version {data[1]}")
    (blen,) = struct.unpack_from("!H", data, 2)
    end = HEADER_LEN + blen
    if end > len(data):
        raise RemoteProtocolError(f"body length {blen} exceeds the {len(data)}-byte datagram")
    pos = HEADER_LEN
    tlvs: list[TLV] = []
    while pos < end:
        ttype = data[pos]
        if ttype == T_PAD1:
            tlvs.append(Pad1())
            pos += 1
            continue
        if pos + 2 > end:
            raise RemoteProtocolError("truncated TLV header")
        tlen = data[pos + 1]
        start = pos + 2
        pos = start + tlen
        if pos > end:
            raise RemoteProtocolError(f"TLV {ttype} of {tlen} bytes overruns the body")
        tlvs.append(_decode_tlv(ttype, data, start, pos))
    return tlvs


def _check_u(value: int, bits: int, what: str) -> None:
    if not 0 <= value < (1 << bits):
        raise LocalProtocolError(f"{what}={value} does not fit in {bits} bits")


def _check_prefix(ae: int, plen: int, omitted: int, prefix: bytes, what: str) -> None:
    _check_u(ae, 8, f"{what} AE")
    _check_u(plen, 8, f"{what} plen")
    _check_u(omitted, 8, f"{what} omitted")
    try:
        want = _prefix_len(ae, plen, omitted)
    except RemoteProtocolError as e:
        raise LocalProtocolError(f"{what}: {e}") from None
    if len(prefix) != want:
        raise LocalProtocolError(f"{what} prefix of {len(prefix)} bytes, expected {want}")


def _check_address(ae: int, address: bytes, allowed: tuple[int, ...], what: str) -> None:
    if ae not in allowed:
        raise LocalProtocolError(f"{what} with address encoding {ae}")
    if len(address) != _ADDR_LEN[ae]:
        raise LocalProtocolError(f"{what} address of {len(address)} bytes for AE {ae}")


def encode_tlv(tlv: TLV, out: bytearray) -> None:
    """Append one TLV to `out`; a value out of range is our bug (LocalProtocolError).

    Whatever this accepts, `decode_packet` accepts and decodes back to an equal TLV.
    """
    tt = type(tlv)
    if tt is Hello or tt is IHU:
        subs = tlv.subtlvs  # type: ignore[union-attr]
        if len(subs) == 1 and type(subs[0]) is Timestamp:
            stamps = subs[0].stamps
            if tt is Hello:
                h = tlv
                assert isinstance(h, Hello)
                if len(stamps) == 1 and 0 <= h.flags <= 0xFFFF and 0 <= h.seqno <= 0xFFFF \
                        and 0 <= h.interval <= 0xFFFF and 0 <= stamps[0] <= 0xFFFFFFFF:
                    out += _HELLO_TS.pack(T_HELLO, 12, h.flags, h.seqno, h.interval,
                                          S_TIMESTAMP, 4, stamps[0])
                    return
            else:
                i = tlv
                assert isinstance(i, IHU)
                if len(stamps) == 2 and i.ae == AE_WILDCARD and not i.address and \
                        0 <= i.rxcost <= 0xFFFF and 0 <= i.interval <= 0xFFFF and \
                        0 <= stamps[0] <= 0xFFFFFFFF and 0 <= stamps[1] <= 0xFFFFFFFF:
                    out += _IHU_TS.pack(T_IHU, 16, AE_WILDCARD, 0, i.rxcost, i.interval,
                                        S_TIMESTAMP, 8, stamps[0], stamps[1])
                    return
    if isinstance(tlv, Pad1):
        out.append(T_PAD1)
        return
    body = bytearray()
    if isinstance(tlv, PadN):
        ttype = T_PADN
        _check_u(tlv.length, 8, "PadN length")
        body += bytes(tlv.length)
    elif isinstance(tlv, AckReq):
        ttype = T_ACKREQ
        _check_u(tlv.opaque, 16, "AckReq opaque")
        _check_u(tlv.interval, 16, "AckReq interval")
        body += struct.pack("!HHH", 0, tlv.opaque, tlv.interval)
    elif isinstance(tlv, Ack):
        ttype = T_ACK
        _check_u(tlv.opaque, 16, "Ack opaque")
        body += struct.pack("!H", tlv.opaque)
    elif isinstance(tlv, Hello):
        ttype = T_HELLO
        _check_u(tlv.flags, 16, "Hello flags")
        _check_u(tlv.seqno, 16, "Hello seqno")
        _check_u(tlv.interval, 16, "Hello interval")
        body += struct.pack("!HHH", tlv.flags, tlv.seqno, tlv.interval)
    elif isinstance(tlv, IHU):
        ttype = T_IHU
        _check_address(tlv.ae, tlv.address, (AE_WILDCARD, AE_IPV4, AE_IPV6, AE_LL), "IHU")
        _check_u(tlv.rxcost, 16, "IHU rxcost")
        _check_u(tlv.interval, 16, "IHU interval")
        body += struct.pack("!BBHH", tlv.ae, 0, tlv.rxcost, tlv.interval) + tlv.address
    elif isinstance(tlv, RouterId):
        ttype = T_ROUTERID
        if len(tlv.router_id) != 8:
            raise LocalProtocolError("router-id must be 8 bytes")
        body += b"\0\0" + tlv.router_id
    elif isinstance(tlv, NextHop):
        ttype = T_NEXTHOP
        _check_address(tlv.ae, tlv.address, (AE_IPV4, AE_IPV6, AE_LL), "Next Hop")
        body += bytes((tlv.ae, 0)) + tlv.address
    elif isinstance(tlv, Update):
        ttype = T_UPDATE
        _check_prefix(tlv.ae, tlv.plen, tlv.omitted, tlv.prefix, "Update")
        _check_u(tlv.flags, 8, "Update flags")
        _check_u(tlv.interval, 16, "Update interval")
        _check_u(tlv.seqno, 16, "Update seqno")
        _check_u(tlv.metric, 16, "Update metric")
        body += struct.pack(
            "!BBBBHHH", tlv.ae, tlv.flags, tlv.plen, tlv.omitted, tlv.interval, tlv.seqno,
            tlv.metric,
        )
        body += tlv.prefix
    elif isinstance(tlv, RouteRequest):
        ttype = T_ROUTEREQ
        _check_prefix(tlv.ae, tlv.plen, 0, tlv.prefix, "Route Request")
        body += bytes((tlv.ae, tlv.plen)) + tlv.prefix
    elif isinstance(tlv, SeqnoRequest):
        ttype = T_SEQNOREQ
        if tlv.ae == AE_WILDCARD:
            raise LocalProtocolError("Seqno Request with AE 0")
        _check_prefix(tlv.ae, tlv.plen, 0, tlv.prefix, "Seqno Request")
        _check_u(tlv.seqno, 16, "Seqno Request seqno")
        _check_u(tlv.hopcount, 8, "Seqno Request hop count")
        if len(tlv.router_id) != 8:
            raise LocalProtocolError("router-id must be 8 bytes")
        body += struct.pack("!BBHBB", tlv.ae, tlv.plen, tlv.seqno, tlv.hopcount, 0)
        body += tlv.router_id + tlv.prefix
    elif isinstance(tlv, Digest):
        ttype = T_DIGEST
        _check_u(tlv.flags, 16, "Digest flags")
        _check_u(tlv.version, 16, "Digest version")
        _check_u(tlv.count, 32, "Digest count")
        _check_u(tlv.hash, 64, "Digest hash")
        body += struct.pack("!HHIQ", tlv.flags, tlv.version, tlv.count, tlv.hash)
    else:
        ttype = tlv.type
        _check_u(ttype, 8, "TLV type")
        if ttype <= T_SEQNOREQ or ttype == T_DIGEST:
            raise LocalProtocolError(f"UnknownTLV with the known type {ttype}")
        body += tlv.body
    if not isinstance(tlv, (PadN, UnknownTLV)):
        _encode_subtlvs(tlv.subtlvs, body, isinstance(tlv, IHU))
    if len(body) > 255:
        raise LocalProtocolError(f"TLV {ttype} body of {len(body)} bytes exceeds 255")
    out += bytes((ttype, len(body)))
    out += body


def encode_packet(tlvs: Iterable[TLV]) -> bytes:
    """Encode TLVs into one packet (header + body)."""
    body = bytearray()
    for tlv in tlvs:
        encode_tlv(tlv, body)
    if len(body) > 0xFFFF:
        raise LocalProtocolError("packet body exceeds 65535 bytes")
    return bytes((MAGIC, VERSION)) + struct.pack("!H", len(body)) + bytes(body)


# ---------------------------------------------------------------- semantic level


def prefix_from_wire(ae: int, plen: int, data: bytes) -> Prefix:
    """Whole prefix from a full (uncompressed) address field; host bits are cleared.

    For AE 3 the field holds only the octets after the implied fe80::/64.
    """
    if ae in (AE_IPV4, AE_V4V6):
        raw = data.ljust(4, b"\0")[:4]
        return ipaddress.IPv4Network((int.from_bytes(raw, "big"), plen), strict=False)
    if ae == AE_IPV6:
        raw = data.ljust(16, b"\0")[:16]
        return ipaddress.IPv6Network((int.from_bytes(raw, "big"), plen), strict=False)
    if ae == AE_LL:
        raw = _LL_PREFIX + data.ljust(8, b"\0")[:8]
        return ipaddress.IPv6Network((int.from_bytes(raw, "big"), plen), strict=False)
    raise RemoteProtocolError(f"no prefix in address encoding {ae}")


def prefix_to_wire(prefix: Prefix) -> tuple[int, bytes]:
    """(AE, address bytes trimmed to the prefix length) of a prefix, as in requests."""
    ae = AE_IPV4 if prefix.version == 4 else AE_IPV6
    return ae, prefix.network_address.packed[: (prefix.prefixlen + 7) // 8]


def update_to_wire(prefix: Prefix) -> tuple[int, bytes]:
    """(AE, address bytes) of a prefix in an Update: an IPv4 prefix goes as v4-via-v6
    (AE 4, RFC 9229), since every neighbour's next hop is its IPv6 link-local address:
    an AE 1 Update with a finite metric would need an IPv4 Next Hop TLV (babeld, BIRD
    and FRR refuse it without one). AE 4 needs no parser state and is the same size."""
    ae = AE_V4V6 if prefix.version == 4 else AE_IPV6
    return ae, prefix.network_address.packed[: (prefix.prefixlen + 7) // 8]


def with_ipv4_next_hop(packet: bytes, next_hop: bytes) -> bytes:
    """`packet` with its v4-via-v6 Updates (AE 4) turned into AE 1 Updates after a Next
    Hop TLV (AE 1, `next_hop`), for a neighbour that wants IPv4 next hops (an older BIRD or
    FRR, which do not parse AE 4). AE 4 and AE 1 Updates have the same layout and separate
    compression state, and we send no AE 1 Update of our own, so only the AE byte changes;
    the Next Hop TLV (8 bytes) goes first in the body. Packets without AE 4 Updates, or
    that do not parse, are returned unchanged."""
    if len(packet) < HEADER_LEN or len(next_hop) != 4:
        return packet
    out = bytearray(packet)
    pos, n, found = HEADER_LEN, len(packet), False
    while pos < n:
        ttype = packet[pos]
        if ttype == T_PAD1:
            pos += 1
            continue
        if pos + 2 > n:
            return packet
        end = pos + 2 + packet[pos + 1]
        if end > n:
            return packet
        if ttype == T_UPDATE and end - pos >= 3 and packet[pos + 2] == AE_V4V6:
            out[pos + 2] = AE_IPV4
            found = True
        elif ttype == T_UPDATE and end - pos >= 3 and packet[pos + 2] == AE_IPV4:
            return packet  # an AE 1 Update already: leave its Next Hop state alone
        pos = end
    if not found:
        return packet
    nh = bytes((T_NEXTHOP, 6, AE_IPV4, 0)) + next_hop
    body = nh + bytes(out[HEADER_LEN:])
    return bytes((MAGIC, VERSION)) + struct.pack("!H", len(body)) + body


def centiseconds(seconds: float) -> int:
    """An interval field (Hello, IHU, Update, AckReq): centiseconds, 1 to 65535."""
    return max(1, min(0xFFFF, round(seconds * 100)))


def ll_from_wire(data: bytes) -> ipaddress.IPv6Address:
    return ipaddress.IPv6Address(_LL_PREFIX + data)


@dataclass(frozen=True, slots=True)
class RouteUpdate:
    """A resolved Update: whole prefix (None for a wildcard retraction) and router-id."""

    prefix: Prefix | None
    router_id: bytes
    seqno: int
    metric: int
    interval: int
    #: The sender's path tie-break (Tiebreak sub-TLV; 0 when absent).
    tie: int = 0
    #: The origin's signature (OriginSig sub-TLV body; empty when absent).
    sig: bytes = b""


@dataclass(frozen=True, slots=True)
class ResolvedRouteRequest:
    prefix: Prefix | None


@dataclass(frozen=True, slots=True)
class ResolvedSeqnoRequest:
    prefix: Prefix
    router_id: bytes
    seqno: int
    hopcount: int


Message = (Hello | IHU | AckReq | Ack | RouteUpdate | ResolvedRouteRequest
           | ResolvedSeqnoRequest | Digest)


def _has_mandatory_unknown(tlv: TLV) -> bool:
    subs = getattr(tlv, "subtlvs", ())
    return any(isinstance(s, UnknownSub) and s.mandatory for s in subs)


def _derived_router_id(prefix: Prefix) -> bytes:
    """Router-id of an Update with the Router-Id flag: the address right-aligned in 8 bytes."""
    addr = prefix.network_address.packed
    return addr[-8:] if len(addr) >= 8 else bytes(8 - len(addr)) + addr


def resolve(tlvs: Sequence[TLV], skipped: list[str] | None = None) -> Iterator[Message]:
    """Walk a decoded packet with the parser state of RFC 8966 section 4.5.

    TLVs that cannot be interpreted (unknown mandatory sub-TLV, compression without a
    default prefix, Update with a finite metric and no router-id) are skipped, with a reason
    appended to `skipped`, as the RFC asks; they do not invalidate the rest of the packet.
    A Router-Id TLV, and an Update's Prefix and Router-Id flags, still set the parser state
    when their TLV is ignored for an unknown mandatory sub-TLV (RFC 8966 section 4.6.9).
    The default prefix is kept per address encoding, as a whole masked address (so a sender
    may omit the zero octets past the previous prefix's length, as babeld does). A
    retraction needs no router-id: it gets `bytes(8)` when there is none.
    """
    router_id: bytes | None = None
    default: dict[int, bytes] = {}  # AE -> whole address of the current default prefix

    def skip(why: str) -> None:
        if skipped is not None:
            skipped.append(why)

    for tlv in tlvs:
        if isinstance(tlv, (Pad1, PadN, UnknownTLV, NextHop)):
            continue
        ignored = _has_mandatory_unknown(tlv)
        if isinstance(tlv, RouterId):
            if tlv.router_id in RESERVED_ROUTER_IDS:
                skip("reserved router-id")
                router_id = None
            else:
                router_id = tlv.router_id
            if ignored:
                skip("unknown mandatory sub-TLV")
            continue
        if isinstance(tlv, Update) and tlv.ae != AE_WILDCARD:
            # The parser state first: it changes even when the TLV itself is ignored.
            set_default = bool(tlv.flags & UPDATE_DEFAULT_PREFIX) and tlv.ae != AE_LL
            if tlv.omitted:
                base = default.get(tlv.ae)
                if base is None:
                    # Whatever state the sender meant to set is unknown: forget it.
                    if set_default:
                        default.pop(tlv.ae, None)
                    if tlv.flags & UPDATE_DEFAULT_ROUTER_ID:
                        router_id = None
                    skip("compressed prefix without a default prefix")
                    continue
                full = base[: tlv.omitted] + tlv.prefix
            else:
                full = tlv.prefix
            prefix = prefix_from_wire(tlv.ae, tlv.plen, full)
            if set_default:
                default[tlv.ae] = prefix.network_address.packed
            if tlv.flags & UPDATE_DEFAULT_ROUTER_ID:
                router_id = _derived_router_id(prefix)
                if router_id in RESERVED_ROUTER_IDS:
                    skip("reserved router-id")
                    router_id = None
            if ignored:
                skip("unknown mandatory sub-TLV")
                continue
            if router_id is None and tlv.metric != INFINITY:
                skip("Update without a router-id")
                continue
            rid = router_id if router_id is not None else bytes(8)
            tie = next((s.value for s in tlv.subtlvs if isinstance(s, Tiebreak)), 0)
            sig = next((s.body for s in tlv.subtlvs if isinstance(s, OriginSig)), b"")
            yield RouteUpdate(prefix, rid, tlv.seqno, tlv.metric, tlv.interval, tie, sig)
            continue
        if ignored:
            skip("unknown mandatory sub-TLV")
            continue
        if isinstance(tlv, (Hello, IHU, AckReq, Ack, Digest)):
            yield tlv
        elif isinstance(tlv, Update):  # AE 0: retracts every route of the sender
            if tlv.metric != INFINITY:
                skip("wildcard Update that is not a retraction")
                continue
            rid = router_id if router_id is not None else bytes(8)
            yield RouteUpdate(None, rid, tlv.seqno, tlv.metric, tlv.interval)
        elif isinstance(tlv, RouteRequest):
            if tlv.ae == AE_WILDCARD:
                yield ResolvedRouteRequest(None)
            else:
                yield ResolvedRouteRequest(prefix_from_wire(tlv.ae, tlv.plen, tlv.prefix))
        elif isinstance(tlv, SeqnoRequest):
            yield ResolvedSeqnoRequest(
                prefix_from_wire(tlv.ae, tlv.plen, tlv.prefix), tlv.router_id, tlv.seqno,
                tlv.hopcount,
            )


@dataclass(slots=True)
class PacketWriter:
    """Builds packets of at most `max_body` bytes, compressing Updates (sans-IO).

    Router-Id TLVs are emitted only when the router-id changes, and each Update sets the
    default-prefix flag and omits the bytes it shares with the previous prefix of its
    address encoding, as babeld does. State resets at every packet boundary. A TLV that
    cannot fit even in an empty packet is our bug (LocalProtocolError).
    """

    max_body: int = MAX_BODY
    packets: list[bytes] = field(default_factory=list)
    _body: bytearray = field(default_factory=bytearray)
    _router_id: bytes | None = None
    _default: dict[int, bytes] = field(default_factory=dict)
    #: The owner's set of writers that may hold output: `key` joins it at every add and
    #: flush (whoever extends `packets` flushes first), so the owner need not scan all.
    dirty: set[str] | None = None
    key: str = ""

    def _room(self, size: int) -> None:
        if size > self.max_body:
            raise LocalProtocolError(f"{size} bytes do not fit in a {self.max_body}-byte body")
        if len(self._body) + size > self.max_body:
            self.flush()

    def add(self, tlv: TLV) -> None:
        buf = bytearray()
        encode_tlv(tlv, buf)
        self._room(len(buf))
        self._body += buf
        if self.dirty is not None:
            self.dirty.add(self.key)
        # Keep our idea of the receiver's parser state right (or forget it, to be safe).
        if isinstance(tlv, RouterId):
            ok = tlv.router_id not in RESERVED_ROUTER_IDS
            self._router_id = tlv.router_id if ok else None
        elif isinstance(tlv, Update) and tlv.ae != AE_WILDCARD:
            if tlv.flags & UPDATE_DEFAULT_PREFIX:
                self._default.pop(tlv.ae, None)
            if tlv.flags & UPDATE_DEFAULT_ROUTER_ID:
                self._router_id = None

    def add_update(
        self, prefix: Prefix | None, router_id: bytes, seqno: int, metric: int, interval: int,
        subtlvs: tuple[SubTLV, ...] = (),
    ) -> None:
        if prefix is None:
            if metric != INFINITY:
                raise LocalProtocolError("a wildcard Update must be a retraction")
        elif len(router_id) != 8 or router_id in RESERVED_ROUTER_IDS:
            raise LocalProtocolError(f"invalid router-id {router_id.hex()}")
        for _attempt in range(2):
            buf = bytearray()
            if prefix is None:
                encode_tlv(Update(AE_WILDCARD, 0, 0, 0, interval, seqno, metric, b"", subtlvs), buf)
            else:
                if router_id != self._router_id:
                    encode_tlv(RouterId(router_id), buf)
                ae, full = update_to_wire(prefix)
                # The receiver's default is the whole masked address of the previous prefix.
                prev = self._default.get(ae, b"")
                limit = min(len(prev), len(full))
                omitted = 0
                while omitted < limit and prev[omitted] == full[omitted]:
                    omitted += 1
                upd = Update(
                    ae, UPDATE_DEFAULT_PREFIX, prefix.prefixlen, omitted, interval, seqno, metric,
                    full[omitted:], subtlvs,
                )
                encode_tlv(upd, buf)
            if len(buf) > self.max_body:
                raise LocalProtocolError(f"Update of {len(buf)} bytes exceeds max_body")
            if len(self._body) + len(buf) > self.max_body:
                self.flush()  # state reset: encode again for a fresh packet
                continue
            self._body += buf
            if self.dirty is not None:
                self.dirty.add(self.key)
            if prefix is not None:
                self._router_id = router_id
                self._default[ae] = prefix.network_address.packed
            return

    def flush(self) -> None:
        if self.dirty is not None:
            self.dirty.add(self.key)
        if not self._body:
            return  # the state below is reset whenever the body is empty
        self.packets.append(bytes((MAGIC, VERSION)) + struct.pack("!H", len(self._body))
                            + bytes(self._body))
        self._body = bytearray()
        self._router_id = None
        self._default = {}

    def take(self) -> list[bytes]:
        self.flush()
        out, self.packets = self.packets, []
        return out


# ---------------------------------------------------------------- fast Update codec
#
# The engine's hot path: packets made only of Router-Ids and plain Updates (what Babel
# speakers send in bulk) are decoded and encoded here without building TLV objects, byte
# for byte as the general codec above would. Anything else goes through the general codec.


class _IPv4Net(ipaddress.IPv4Network):
    """An interned IPv4 prefix: equal to (and hashing like) the plain one, hash cached."""

    __slots__ = ("_h",)
    _h: int

    def __hash__(self) -> int:
        return self._h

    def __repr__(self) -> str:
        return f"IPv4Network({str(self)!r})"


class _IPv6Net(ipaddress.IPv6Network):
    """An interned IPv6 prefix: equal to (and hashing like) the plain one, hash cached."""

    __slots__ = ("_h",)
    _h: int

    def __hash__(self) -> int:
        return self._h

    def __repr__(self) -> str:
        return f"IPv6Network({str(self)!r})"


class PrefixCache:
    """Prefixes as shared objects, and their wire forms: a pure, bounded memo.

    ipaddress networks compute their hash and compare field by field on every dict
    operation, and the engine does many per Update, so it keys its tables by interned
    prefixes (dict lookups then hit the identity fast path) and remembers each prefix's
    wire form both ways. Nothing here changes what any function returns (an interned
    prefix equals and hashes like the plain one), only how fast: so one instance,
    `PREFIXES`, serves every engine of a process (the simulator runs thousands of nodes
    over the same prefixes: one cache per node would multiply its memory by the nodes).
    Each map is cleared when it reaches `limit` entries.
    """

    __slots__ = ("by_field", "interned", "limit", "to_wire")

    def __init__(self, limit: int = 1 << 20) -> None:
        self.limit = limit
        #: prefix -> the one interned object equal to it.
        self.interned: dict[Prefix, Prefix] = {}
        #: (AE, prefix length, uncompressed field) -> (interned prefix, whole address).
        self.by_field: dict[tuple[int, int, bytes], tuple[Prefix, bytes]] = {}
        #: prefix -> (AE, prefix bytes on the wire, whole address).
        self.to_wire: dict[Prefix, tuple[int, bytes, bytes]] = {}

    def intern(self, prefix: Prefix) -> Prefix:
        """The one shared object equal to `prefix`, with a cached hash."""
        got = self.interned.get(prefix)
        if got is not None:
            return got
        net: _IPv4Net | _IPv6Net
        if prefix.version == 4:
            net = _IPv4Net((prefix.network_address, prefix.prefixlen))
            net._h = ipaddress.IPv4Network.__hash__(net)
        else:
            net = _IPv6Net((prefix.network_address, prefix.prefixlen))
            net._h = ipaddress.IPv6Network.__hash__(net)
        if len(self.interned) >= self.limit:
            self.interned.clear()
        self.interned[net] = net
        return net

    def from_field(self, ae: int, plen: int, full: bytes) -> tuple[Prefix, bytes]:
        """(interned prefix, whole address) for an uncompressed prefix field."""
        key = (ae, plen, full)
        got = self.by_field.get(key)
        if got is None:
            prefix = self.intern(prefix_from_wire(ae, plen, full))
            got = (prefix, prefix.network_address.packed)
            if len(self.by_field) >= self.limit:
                self.by_field.clear()
            self.by_field[key] = got
        return got

    def wire(self, prefix: Prefix) -> tuple[int, bytes, bytes]:
        """(AE, prefix bytes on the wire, whole address) of a prefix."""
        got = self.to_wire.get(prefix)
        if got is None:
            ae, raw = update_to_wire(prefix)
            got = (ae, raw, prefix.network_address.packed)
            if len(self.to_wire) >= self.limit:
                self.to_wire.clear()
            self.to_wire[prefix] = got
        return got


#: The process's one prefix memo (see PrefixCache: pure and bounded).
PREFIXES = PrefixCache()


def intern_prefix(prefix: Prefix) -> Prefix:
    """The one shared object equal to `prefix`, with a cached hash (see PrefixCache)."""
    return PREFIXES.intern(prefix)


_UPDATE_FIELDS = struct.Struct("!BBBBHHH").unpack_from


FastUpdate = tuple[Prefix, bytes, int, int, int, int, bytes]


def fast_updates(data: bytes) -> list[FastUpdate] | None:
    """The Updates of a packet made only of Router-Ids and plain Updates, or None.

    "Plain" is what Babel speakers send in bulk: AE 1, 2 or 4, no sub-TLV but at most one
    Tiebreak and one OriginSig, no flag but the default-prefix one. For such a packet this
    gives (prefix, router-id, seqno, metric, interval, tie, signature) exactly as
    `resolve(decode_packet(data))` would (prefixes interned); for any other packet (Hellos,
    requests, anything unusual, anything malformed) it gives None and the general decoder
    handles it, errors included.
    """
    n = len(data)
    if n < 4 or data[0] != MAGIC or data[1] != VERSION or 4 + (data[2] << 8 | data[3]) != n:
        return None
    pos = 4
    rid: bytes | None = None
    default: dict[int, bytes] = {}
    out: list[FastUpdate] = []
    fields = _UPDATE_FIELDS
    by_field = PREFIXES.by_field
    from_field = PREFIXES.from_field
    while pos < n:
        if pos + 2 > n:
            return None
        ttype = data[pos]
        start = pos + 2
        pos = start + data[pos + 1]
        if pos > n:
            return None
        if ttype == 8:
            if pos - start < 10:
                return None
            ae, flags, plen, omitted, interval, seqno, metric = fields(data, start)
            if flags & 0x7F or not ((ae == 2 and plen <= 128) or
                                    ((ae == 1 or ae == 4) and plen <= 32)):
                return None
            nbytes = (plen + 7) >> 3
            end = start + 10 + nbytes - omitted
            if omitted > nbytes:
                return None
            tie = 0
            sig = b""
            if pos != end:
                if end > pos:
                    return None
                if pos == end + 10 and data[end] == S_TIEBREAK and data[end + 1] == 8:
                    tie = int.from_bytes(data[end + 2:pos], "big")
                else:
                    # A Tiebreak and an OriginSig, each at most once, in either order.
                    sub = end
                    seen_tie = False
                    while sub < pos:
                        if sub + 2 > pos:
                            return None
                        stype, slen = data[sub], data[sub + 1]
                        nxt = sub + 2 + slen
                        if nxt > pos:
                            return None
                        if stype == S_TIEBREAK and slen == 8 and not seen_tie:
                            tie = int.from_bytes(data[sub + 2:nxt], "big")
                            seen_tie = True
                        elif stype == S_ORIGIN_SIG and slen and not sig:
                            sig = data[sub + 2:nxt]
                        else:
                            return None
                        sub = nxt
            if omitted:
                base = default.get(ae)
                if base is None:
                    return None
                full = base[:omitted] + data[start + 10:end]
            else:
                full = data[start + 10:end]
            got = by_field.get((ae, plen, full))
            prefix, whole = got if got is not None else from_field(ae, plen, full)
            if flags:
                default[ae] = whole
            if rid is None:
                if metric != INFINITY:
                    return None
                out.append((prefix, bytes(8), seqno, metric, interval, tie, sig))
            else:
                out.append((prefix, rid, seqno, metric, interval, tie, sig))
        elif ttype == 6 and pos - start == 10:
            rid = data[start + 2:pos]
            if rid in RESERVED_ROUTER_IDS:
                return None
        else:
            return None
    return out


def fast_updates_acked(data: bytes) -> tuple[list[FastUpdate], int] | None:
    """`fast_updates` for a packet of plain Updates ending with a plain AckReq (what
    quiet mode sends): (updates, AckReq opaque), or None (the general decoder then)."""
    n = len(data)
    if n < 16 or data[-8] != T_ACKREQ or data[-7] != 6 or (data[2] << 8 | data[3]) != n - 4:
        return None
    updates = fast_updates(data[:2] + struct.pack("!H", n - 12) + data[4:-8])
    if updates is None:
        return None
    return updates, data[-4] << 8 | data[-3]


_UPDATE = struct.Struct("!BBBBBBHHH")
_HEADER = bytes((MAGIC, VERSION))
_TIE_HEADER = bytes((S_TIEBREAK, 8))


#: (prefix, router-id, seqno, metric, tie, origin signature) of one Update to encode.
UpdateEntry = tuple[Prefix, bytes, int, int, int, bytes]


def encode_updates(entries: list[UpdateEntry], interval: int,
                   max_body: int = MAX_BODY) -> tuple[list[bytes], list[tuple[int, int]]]:
    """Packets carrying Updates (prefix, router-id, seqno, metric, tie, sig), in order.

    Byte for byte what `PacketWriter.add_update` builds from a fresh writer (Router-Id
    only when it changes, the default-prefix flag on every Update, the bytes shared with
    the previous prefix of the same AE omitted, a Tiebreak sub-TLV when the tie is not 0,
    then an OriginSig when the signature is not empty, state reset at each packet), only
    faster. Also returns, per entry, (packet index,
    offset of its metric) so one encoding can serve several neighbours with a few metrics
    patched (poison reverse).
    """
    packets: list[bytes] = []
    offsets: list[tuple[int, int]] = []
    body = bytearray()
    cur_rid: bytes | None = None
    default: dict[int, bytes] = {}
    pack = _UPDATE.pack
    to_wire = PREFIXES.to_wire
    wire = PREFIXES.wire
    for prefix, rid, seqno, metric, tie, sig in entries:
        got = to_wire.get(prefix)
        ae, full, whole = got if got is not None else wire(prefix)
        sub = (10 if tie else 0) + (2 + len(sig) if sig else 0)
        if len(sig) > 255:
            raise LocalProtocolError(f"origin signature of {len(sig)} bytes")
        while True:
            prev = default.get(ae)
            omitted = 0
            if prev is not None:
                limit = min(len(prev), len(full))
                while omitted < limit and prev[omitted] == full[omitted]:
                    omitted += 1
            size = (24 if rid != cur_rid else 12) + len(full) - omitted + sub
            if body and len(body) + size > max_body:
                packets.append(_HEADER + struct.pack("!H", len(body)) + bytes(body))
                body = bytearray()
                cur_rid = None
                default = {}
                continue
            break
        if rid != cur_rid:
            body += b"\x06\x0a\x00\x00"
            body += rid
            cur_rid = rid
        offsets.append((len(packets), len(body) + 14))
        body += pack(8, 10 + len(full) - omitted + sub, ae, UPDATE_DEFAULT_PREFIX,
                     prefix.prefixlen, omitted, interval, seqno, metric)
        body += full[omitted:]
        if tie:
            body += _TIE_HEADER
            body += tie.to_bytes(8, "big")
        if sig:
            body.append(S_ORIGIN_SIG)
            body.append(len(sig))
            body += sig
        default[ae] = whole
    if body:
        packets.append(_HEADER + struct.pack("!H", len(body)) + bytes(body))
    return packets, offsets
