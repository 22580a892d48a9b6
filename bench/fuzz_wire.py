#!/usr/bin/env python3
"""Fuzz the Babel codec: random and mutated packets through decode_packet + resolve.

Every input must either decode (and resolve) or raise RemoteProtocolError; anything else
is a crash. Prints one JSON object, writes it to bench/results/fuzz_wire.json, and exits
1 if there was any crash. Deterministic for a given --seed.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import random
import struct
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from wgcast.babel.errors import RemoteProtocolError
from wgcast.babel.wire import (
    AE_IPV4,
    AE_IPV6,
    AE_LL,
    AE_V4V6,
    AE_WILDCARD,
    HEADER_LEN,
    IHU,
    INFINITY,
    TLV,
    Ack,
    AckReq,
    Digest,
    Hello,
    NextHop,
    PacketWriter,
    Pad1,
    PadN,
    RouteRequest,
    RouterId,
    SeqnoRequest,
    SubPad1,
    SubPadN,
    SubTLV,
    Timestamp,
    UnknownSub,
    UnknownTLV,
    Update,
    decode_packet,
    encode_packet,
    encode_tlv,
    resolve,
)

RESULTS = Path(__file__).resolve().parent / "results" / "fuzz_wire.json"
_ADDR_LEN = {AE_WILDCARD: 0, AE_IPV4: 4, AE_IPV6: 16, AE_LL: 8, AE_V4V6: 4}
_MAX_PLEN = {AE_WILDCARD: 0, AE_IPV4: 32, AE_IPV6: 128, AE_LL: 128, AE_V4V6: 32}
_AES = (AE_WILDCARD, AE_IPV4, AE_IPV6, AE_LL, AE_V4V6)


# ---------------------------------------------------------------- valid packets


def _subtlvs(rng: random.Random, in_ihu: bool) -> tuple[SubTLV, ...]:
    out: list[SubTLV] = []
    for _ in range(rng.choice((0, 0, 0, 1, 1, 2, 3))):
        k = rng.randrange(4)
        if k == 0:
            out.append(SubPad1())
        elif k == 1:
            out.append(SubPadN(rng.randrange(8)))
        elif k == 2:
            out.append(Timestamp(tuple(rng.getrandbits(32) for _ in range(2 if in_ihu else 1))))
        else:
            stype = rng.choice((2, 4, 5, 0x7F, 0x80, 0x81, 0xFF))
            out.append(UnknownSub(stype, rng.randbytes(rng.randrange(6))))
    return tuple(out)


def _prefix(rng: random.Random, ae: int, compress: bool) -> tuple[int, int, bytes]:
    """(plen, omitted, wire bytes) valid for `ae`."""
    if ae == AE_WILDCARD:
        return 0, 0, b""
    if ae == AE_LL:
        plen = rng.randint(64, 128)
        return plen, 0, rng.randbytes((plen + 7) // 8 - 8)
    plen = rng.choice((rng.randint(0, _MAX_PLEN[ae]), _MAX_PLEN[ae]))
    full = (plen + 7) // 8
    omitted = rng.randint(0, full) if compress and rng.random() < 0.5 else 0
    return plen, omitted, rng.randbytes(full - omitted)


def random_tlv(rng: random.Random) -> TLV:
    def subs(in_ihu: bool = False) -> tuple[SubTLV, ...]:
        return _subtlvs(rng, in_ihu)

    def ihu() -> IHU:
        ae = rng.choice((AE_WILDCARD, AE_IPV4, AE_IPV6, AE_LL))
        addr = rng.randbytes(_ADDR_LEN[ae])
        return IHU(ae, rng.getrandbits(16), rng.getrandbits(16), addr, subs(True))

    def next_hop() -> NextHop:
        ae = rng.choice((AE_IPV4, AE_IPV6, AE_LL))
        return NextHop(ae, rng.randbytes(_ADDR_LEN[ae]), subs())

    def router_id() -> RouterId:
        rid = rng.choice((rng.randbytes(8), bytes(8), b"\xff" * 8, bytes(7) + b"\x01"))
        return RouterId(rid, subs())

    def update() -> Update:
        ae = rng.choice(_AES)
        plen, omitted, pfx = _prefix(rng, ae, True)
        flags = rng.choice((0, 0x80, 0x40, 0xC0, rng.getrandbits(8)))
        metric = rng.choice((0, 96, 256, INFINITY - 1, INFINITY, rng.getrandbits(16)))
        return Update(ae, flags, plen, omitted, rng.getrandbits(16), rng.getrandbits(16),
                      metric, pfx, subs())

    def route_request() -> RouteRequest:
        ae = rng.choice(_AES)
        plen, _, pfx = _prefix(rng, ae, False)
        return RouteRequest(ae, plen, pfx, subs())

    def seqno_request() -> SeqnoRequest:
        ae = rng.choice((AE_IPV4, AE_IPV6, AE_LL, AE_V4V6))
        plen, _, pfx = _prefix(rng, ae, False)
        return SeqnoRequest(ae, plen, rng.getrandbits(16), rng.getrandbits(8),
                            rng.randbytes(8), pfx, subs())

    makers: list[Callable[[], TLV]] = [
        lambda: Pad1(),
        lambda: PadN(rng.randrange(12)),
        lambda: AckReq(rng.getrandbits(16), rng.getrandbits(16), subs()),
        lambda: Ack(rng.getrandbits(16), subs()),
        lambda: Hello(rng.choice((0, 0x8000)), rng.getrandbits(16), rng.getrandbits(16), subs()),
        ihu, next_hop, router_id, router_id,
        update, update, update, update, update,
        route_request, seqno_request,
        lambda: UnknownTLV(rng.choice((11, 99, 223, 225, 255)), rng.randbytes(rng.randrange(16))),
        lambda: Digest(rng.getrandbits(16), rng.getrandbits(16), rng.getrandbits(32),
                       rng.getrandbits(64), subs()),
    ]
    return rng.choice(makers)()


def _writer_packets(rng: random.Random) -> list[bytes]:
    """Realistic compressed Update streams from PacketWriter."""
    w = PacketWriter(max_body=rng.choice((64, 200, 1228)))
    rids = [rng.randbytes(7) + bytes((i + 1,)) for i in range(3)]
    base6 = 0x20010DB8 << 96
    for _ in range(rng.randint(1, 60)):
        r = rng.random()
        if r < 0.05:
            w.add_update(None, rids[0], rng.getrandbits(16), INFINITY, 400)
            continue
        if r < 0.5:
            net: ipaddress.IPv4Network | ipaddress.IPv6Network = ipaddress.IPv4Network(
                ((10 << 24) + rng.getrandbits(16), rng.choice((16, 24, 32))), strict=False
            )
        else:
            net = ipaddress.IPv6Network(
                (base6 + (rng.getrandbits(16) << rng.choice((0, 64, 80))),
                 rng.choice((32, 48, 64, 128))), strict=False,
            )
        w.add_update(net, rng.choice(rids), rng.getrandbits(16), rng.getrandbits(16), 400)
    return w.take()


def _length_positions(tlvs: list[TLV]) -> list[int]:
    """Offsets of every TLV and sub-TLV length byte in encode_packet(tlvs)."""
    out: list[int] = []
    pos = HEADER_LEN
    for t in tlvs:
        buf = bytearray()
        encode_tlv(t, buf)
        if not isinstance(t, Pad1):
            out.append(pos + 1)
            if not isinstance(t, (PadN, UnknownTLV)) and t.subtlvs:
                bare = bytearray()
                encode_tlv(dataclasses.replace(t, subtlvs=()), bare)
                spos = pos + len(bare)
                for s in t.subtlvs:
                    if isinstance(s, SubPad1):
                        spos += 1
                        continue
                    out.append(spos + 1)
                    spos += 2 + buf[spos - pos + 1]
        pos += len(buf)
    return out


def build_corpus(rng: random.Random, size: int) -> list[tuple[bytes, list[int]]]:
    corpus: list[tuple[bytes, list[int]]] = []
    while len(corpus) < size:
        if rng.random() < 0.2:
            for p in _writer_packets(rng):
                corpus.append((p, _length_positions(decode_packet(p))))
            continue
        tlvs = [random_tlv(rng) for _ in range(rng.randint(1, 12))]
        data = encode_packet(tlvs)
        corpus.append((data, _length_positions(tlvs)))
    return corpus


# ---------------------------------------------------------------- mutations


def mutate(rng: random.Random, data: bytes, lengths: list[int], other: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.choice((1, 1, 1, 2, 3, 5))):
        k = rng.randrange(9)
        if k <= 1 and b:  # bit flip
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        elif k == 2 and b:  # truncation
            del b[rng.randrange(len(b)) :]
        elif k == 3:  # insertion of random bytes
            i = rng.randrange(len(b) + 1)
            b[i:i] = rng.randbytes(rng.randint(1, 8))
        elif k == 4 and lengths:  # a TLV or sub-TLV length field
            i = rng.choice(lengths)
            if i < len(b):
                b[i] = rng.choice(((b[i] + rng.randint(-3, 3)) % 256, 0, 255, rng.getrandbits(8)))
        elif k == 5 and len(b) >= HEADER_LEN:  # the body length field
            blen = len(b) - HEADER_LEN
            new = rng.choice((blen + rng.randint(-4, 4), 0, 0xFFFF, rng.getrandbits(16)))
            b[2:4] = struct.pack("!H", new % 0x10000)
        elif k == 6 and len(b) > HEADER_LEN:  # a byte set to an interesting value
            b[rng.randrange(HEADER_LEN, len(b))] = rng.choice((0, 1, 2, 3, 4, 5, 7, 8, 0x80, 255))
        elif k == 7 and len(b) > HEADER_LEN:  # deletion
            i = rng.randrange(HEADER_LEN, len(b))
            del b[i : i + rng.randint(1, 4)]
        elif k == 8:  # splice another packet's body in (parser state across TLVs)
            i = rng.randrange(HEADER_LEN, max(HEADER_LEN, len(b)) + 1)
            b[i:i] = other[HEADER_LEN:]
    if k in (2, 3, 7, 8) and len(b) >= HEADER_LEN and rng.random() < 0.6:
        # Often keep the header honest, so the mutation reaches the TLV parser.
        b[2:4] = struct.pack("!H", min(0xFFFF, len(b) - HEADER_LEN))
    return bytes(b)


def random_packet(rng: random.Random) -> bytes:
    body = rng.randbytes(rng.randrange(96))
    r = rng.random()
    if r < 0.15:
        return body  # no header at all
    magic, version = (42, 2) if r < 0.95 else (rng.getrandbits(8), rng.getrandbits(8))
    blen = len(body) if rng.random() < 0.9 else rng.getrandbits(16)
    return bytes((magic, version)) + struct.pack("!H", blen) + body


# ---------------------------------------------------------------- driver


def run(count: int, seed: int) -> tuple[dict[str, object], list[str]]:
    rng = random.Random(seed)
    corpus = build_corpus(rng, 4000)
    decoded = rejected = crashes = 0
    examples: list[str] = []
    t0 = time.perf_counter()
    for _ in range(count):
        if rng.random() < 0.2:
            data = random_packet(rng)
        else:
            base, lengths = rng.choice(corpus)
            data = mutate(rng, base, lengths, rng.choice(corpus)[0])
        try:
            tlvs = decode_packet(data)
        except RemoteProtocolError:
            rejected += 1
            continue
        except Exception:
            crashes += 1
            if len(examples) < 10:
                examples.append(f"decode {data.hex()}\n{traceback.format_exc()}")
            continue
        try:
            for _msg in resolve(tlvs, []):
                pass
        except RemoteProtocolError:
            pass
        except Exception:
            crashes += 1
            if len(examples) < 10:
                examples.append(f"resolve {data.hex()}\n{traceback.format_exc()}")
            continue
        decoded += 1
    seconds = time.perf_counter() - t0
    result: dict[str, object] = {
        "count": count,
        "decoded": decoded,
        "rejected": rejected,
        "crashes": crashes,
        "seconds": round(seconds, 3),
        "per_second": round(count / seconds) if seconds > 0 else None,
        "seed": seed,
    }
    return result, examples


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--count", type=int, default=1_000_000, help="packets to try")
    ap.add_argument("--seed", type=int, default=1, help="random seed")
    args = ap.parse_args(argv)
    result, examples = run(args.count, args.seed)
    for e in examples:
        print(e, file=sys.stderr)
    line = json.dumps(result)
    print(line)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(line + "\n")
    return 1 if result["crashes"] else 0


if __name__ == "__main__":
    sys.exit(main())
