"""An Ack leaves only once the data plane no longer sends the acking neighbour the
traffic a route change took away from it (`Daemon._gate`): a draining instance waits
for the acks of its retraction before its address goes down, so however slow a
neighbour is to apply, nothing is sent to the address after it went down."""

from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path
from typing import Any

from daemon_fakes import Mesh, Node, config_text, running, until

from wgcast import keys
from wgcast.anycast.group import DRAIN_METRIC
from wgcast.daemon.runtime import _has_ack

ANY = ipaddress.ip_network("10.99.0.53/32")
OTHER = ipaddress.ip_network("10.99.0.54/32")


def _trio(tmp: Path) -> tuple[Mesh, Node, Node, Node]:
    pa, pb, pc = (keys.generate_private() for _ in range(3))
    ka, kb, kc = (keys.public_from_private(k) for k in (pa, pb, pc))
    mesh = Mesh()
    anycast = 'anycast = ["10.99.0.0/16"]'
    a = mesh.add("a", pa, config_text("a", str(tmp), {"b": kb, "c": kc}, anycast,
                                      timers='move_hold = "0s"'))
    # b resends its retraction after 2 x hello, 3 times: slow enough for the test.
    b = mesh.add("b", pb, config_text("b", str(tmp), {"a": ka}, anycast,
                                      timers='hello = "400ms"'))
    c = mesh.add("c", pc, config_text("c", str(tmp), {"a": ka}, anycast))
    return mesh, a, b, c


def test_an_ack_waits_for_the_data_plane_to_move(tmp_path: Path) -> None:
    async def main() -> None:
        mesh, a, b, c = _trio(tmp_path)
        async with running(mesh):
            await until(lambda: a.daemon.status()["neighbours_up"] == 2, what="neighbours")
            await b.daemon.serve(ANY)
            await c.daemon.serve(ANY, metric=200)
            await until(lambda: a.device.holder(ANY) == b.public, what="ANY on b")
            # a's WireGuard device stalls (a loaded host): nothing is applied meanwhile.
            gate = asyncio.Event()
            apply = a.device.apply

            async def slow(ops: Any) -> None:
                await gate.wait()
                await apply(ops)

            a.device.apply = slow  # type: ignore[method-assign]
            await b.daemon.serve(ANY, metric=DRAIN_METRIC)  # b drains: a moves to c
            await until(lambda: any(s.prefix == ANY and s.via == "c"
                                    for s in a.daemon.view.selected()),  # type: ignore[union-attr]
                        what="a selected c")
            unserve = asyncio.create_task(b.daemon.unserve(ANY, wait=3.0))
            await until(lambda: a.daemon.acks_held >= 1, what="a's Ack held back")
            # Meanwhile b announces another prefix: quiet mode asks a for an Ack of that
            # delivery. It retracts nothing: a sends it at once, not held with the Acks
            # of ANY's retraction (which would expire at the gate's bound, counted).
            node_b = b.daemon.node
            assert node_b is not None
            await b.daemon.serve(OTHER)

            def other_acked() -> bool:
                return all(OTHER not in d.prefixes
                           for per in node_b.requests.deliveries.values()
                           for d in per.values())

            await until(other_acked, what="b's delivery of OTHER acked by a")
            assert not unserve.done()
            assert a.device.holder(ANY) == b.public
            gate.set()
            assert await asyncio.wait_for(unserve, 3.0) is True  # acked, once applied
            assert a.device.holder(ANY) == c.public
            assert a.daemon.status()["dataplane"]["acks_gate_expired"] == 0

    asyncio.run(main())


def test_has_ack_reads_the_tlvs() -> None:
    from wgcast.babel.wire import Ack, AckReq, Hello, Pad1, PadN, encode_packet

    assert _has_ack(encode_packet([Pad1(), PadN(3), Hello(0, 1, 100), Ack(7)]))
    assert not _has_ack(encode_packet([Hello(0, 1, 100), AckReq(7, 100)]))
    assert not _has_ack(b"") and not _has_ack(b"\x2a\x02\x00\x05\x04")
