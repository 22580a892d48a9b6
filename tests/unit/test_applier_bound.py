"""The data-plane applier does bounded work per apply: a flood of routes goes in rounds,
routes already installed first, and every route ends installed."""

from __future__ import annotations

import asyncio
import ipaddress

from daemon_fakes import FakeDevice, FakeHost, FakeMoveHold, until

from wgcast import keys
from wgcast.daemon.applier import DataPlaneApplier
from wgcast.daemon.config import loads
from wgcast.daemon.runtime import LoopScheduler


def test_a_flood_is_applied_in_bounded_rounds_moves_first(tmp_path: object) -> None:
    async def main() -> None:
        k1 = keys.public_from_private(keys.generate_private())
        k2 = keys.public_from_private(keys.generate_private())
        cfg = loads(f'interface = "wg-b"\nstate_file = "{tmp_path}/b.state"\n'
                    f'api_socket = "{tmp_path}/b.sock"\nprobe_port = 0\n'
                    f'[[peers]]\nname = "p1"\npublic_key = "{keys.b64(k1)}"\n'
                    f'[[peers]]\nname = "p2"\npublic_key = "{keys.b64(k2)}"\n')
        dev = FakeDevice(keys.generate_private(), [k1, k2])
        host = FakeHost("wg-b")
        dp = DataPlaneApplier(cfg, dev, host, LoopScheduler(asyncio.get_running_loop()),
                              lambda: None, {}, lambda _n: FakeMoveHold("h"))
        dp.max_prefixes = 8
        await dp.load(await dev.get())  # as the daemon starts: the device's peers known
        batches: list[set[object]] = []
        apply = dev.apply

        async def recording(ops: list[object]) -> None:
            batches.append({op.prefix for op in ops})  # type: ignore[attr-defined]
            await apply(ops)  # type: ignore[arg-type]

        dev.apply = recording  # type: ignore[method-assign,assignment]
        stop = asyncio.Event()
        task = asyncio.create_task(dp.run(stop))
        try:
            real = ipaddress.ip_network("10.1.0.0/24")
            dp.route_selected(real, k1, 100)
            await until(lambda: dev.holder(real) == k1, what="the real route installed")
            flood = [ipaddress.ip_network(f"10.9.{i // 256}.{i % 256}/32") for i in range(100)]
            for p in flood:
                dp.route_selected(p, k2, 100)
            dp.route_selected(real, k2, 100)  # a move, queued after the flood
            before = len(batches)
            await until(lambda: all(dev.holder(p) == k2 for p in flood), what="the flood")
            assert dev.holder(real) == k2 and all(p in host.routes for p in flood)
            rounds = batches[before:]
            # Bounded rounds; the move of the installed route went in the first one.
            assert len(rounds) >= 100 // 8 and all(len(b) <= 8 for b in rounds)
            assert real in rounds[0]
            assert dp.stats.split >= 100 // 8
        finally:
            stop.set()
            task.cancel()

    asyncio.run(main())


def test_a_kernel_route_lingers_while_its_prefix_has_no_route(tmp_path: object) -> None:
    """A prefix that loses its last route loses its AllowedIPs entry at once, but its
    kernel route stays for `route_linger`: a route back within it (a failover passing
    through "no route") changes only AllowedIPs; past it, the kernel route goes."""
    async def main() -> None:
        k1 = keys.public_from_private(keys.generate_private())
        k2 = keys.public_from_private(keys.generate_private())
        cfg = loads(f'interface = "wg-b"\nstate_file = "{tmp_path}/b.state"\n'
                    f'api_socket = "{tmp_path}/b.sock"\nprobe_port = 0\n'
                    f'[[peers]]\nname = "p1"\npublic_key = "{keys.b64(k1)}"\n'
                    f'[[peers]]\nname = "p2"\npublic_key = "{keys.b64(k2)}"\n')
        dev = FakeDevice(keys.generate_private(), [k1, k2])
        host = FakeHost("wg-b")
        dp = DataPlaneApplier(cfg, dev, host, LoopScheduler(asyncio.get_running_loop()),
                              lambda: None, {}, lambda _n: FakeMoveHold("h"))
        dp.route_linger = 0.3
        await dp.load(await dev.get())
        stop = asyncio.Event()
        task = asyncio.create_task(dp.run(stop))
        try:
            p = ipaddress.ip_network("10.99.0.53/32")
            dp.route_selected(p, k1, 100)
            await until(lambda: dev.holder(p) == k1 and p in host.routes, what="installed")
            dp.route_selected(p, None, 0xFFFF)  # unreachable for a moment
            await until(lambda: dev.holder(p) is None, what="AllowedIPs entry removed")
            assert p in host.routes  # the kernel route lingers
            calls = len(host.calls)
            dp.route_selected(p, k2, 100)  # the route back, through another peer
            await until(lambda: dev.holder(p) == k2, what="moved to p2")
            assert p in host.routes and not any(c[0].startswith("remove")
                                                for c in host.calls[calls:])
            dp.route_selected(p, None, 0xFFFF)  # gone for good: the route goes too
            await until(lambda: p not in host.routes, timeout=5.0, what="route removed")
            assert dev.holder(p) is None
        finally:
            stop.set()
            task.cancel()

    asyncio.run(main())
