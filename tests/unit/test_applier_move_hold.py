"""Move holds in the data-plane applier: which moves away from a live peer are held."""

from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path
from typing import cast

from daemon_fakes import FakeDevice, FakeHost, FakeMoveHold, until

from wgcast import keys
from wgcast.daemon.applier import DataPlaneApplier
from wgcast.daemon.config import loads
from wgcast.daemon.ports import EngineView, NeighbourSnapshot, RouteSnapshot
from wgcast.daemon.runtime import LoopScheduler
from wgcast.prefix import Prefix

ANY = ipaddress.ip_network("10.99.0.53/32")


class FakeEngine:
    """The part of `ports.EngineView` move holds read: neighbours up, 10 ms RTT, and the
    routes each neighbour offers now."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.routes: dict[Prefix, list[RouteSnapshot]] = {}

    def neighbour(self, name: str) -> NeighbourSnapshot | None:
        return NeighbourSnapshot(name, True, 10.0, 0.0, 0.2) if name in self.names else None

    def routes_to(self, prefix: Prefix) -> tuple[RouteSnapshot, ...]:
        return tuple(self.routes.get(prefix, ()))


def _moved(tmp: Path, withdrew: bool, drained: bool = False) -> tuple[int, int]:
    """ANY on origin b, then on c: (holds, moves not held as a withdrawal). `drained`:
    b announced a draining instance before its route went."""
    async def main() -> tuple[int, int]:
        kb, kc = (keys.public_from_private(keys.generate_private()) for _ in range(2))
        cfg = loads(f'interface = "wg-a"\nstate_file = "{tmp}/a.state"\n'
                    f'api_socket = "{tmp}/a.sock"\nprobe_port = 0\n'
                    f'[timers]\nmove_hold = "200ms"\n'
                    f'[[peers]]\nname = "b"\npublic_key = "{keys.b64(kb)}"\n'
                    f'[[peers]]\nname = "c"\npublic_key = "{keys.b64(kc)}"\n')
        dev = FakeDevice(keys.generate_private(), [kb, kc])
        engine = FakeEngine(["b", "c"])
        view = cast(EngineView, engine)  # the two methods move holds read
        hold = FakeMoveHold("wg-a-h")
        dp = DataPlaneApplier(cfg, dev, FakeHost("wg-a"),
                              LoopScheduler(asyncio.get_running_loop()),
                              lambda: view, {kb: "b", kc: "c"}, lambda _n: hold)
        await dp.load(await dev.get())
        await dp.open_move_hold()
        stop = asyncio.Event()
        task = asyncio.create_task(dp.run(stop))
        try:
            rb, rc = keys.router_id(kb), keys.router_id(kc)
            engine.routes[ANY] = [RouteSnapshot("b", rb, 1, 0, 128),
                                  RouteSnapshot("c", rc, 1, 0, 400)]
            dp.route_selected(ANY, kb, 128, rb)
            await until(lambda: dev.holder(ANY) == kb, what="ANY on b")
            if drained:  # heard before the retraction (a drain's two steps)
                dp.heard("b", ANY, 0xFF00)
            if withdrew:  # b retracted its instance: its route is gone
                engine.routes[ANY] = [RouteSnapshot("c", rc, 1, 0, 400)]
            else:  # b drains: still announced, with a metric worse than c's
                engine.routes[ANY] = [RouteSnapshot("b", rb, 2, 0xFF00, 0xFF80),
                                      RouteSnapshot("c", rc, 1, 0, 400)]
            dp.route_selected(ANY, kc, 400, rc)
            await until(lambda: dev.holder(ANY) == kc, what="ANY moved to c")
            return hold.stats.holds, dp.stats.unheld_withdrawals
        finally:
            stop.set()
            task.cancel()

    return asyncio.run(main())


def test_a_move_away_from_a_draining_origin_is_held(tmp_path: Path) -> None:
    assert _moved(tmp_path, withdrew=False) == (1, 0)


def test_a_move_away_from_an_origin_that_withdrew_is_not_held(tmp_path: Path) -> None:
    """A service killed (or left) at b: nothing of its instance comes back, a hold would
    only add its length to the outage."""
    assert _moved(tmp_path, withdrew=True) == (0, 1)


def test_a_drains_retraction_before_the_move_is_applied_keeps_the_hold(tmp_path: Path) -> None:
    """b drained, then retracted, both before our move was applied (a slow host, the
    kernel test bed): the move ends a drain, it is held as one."""
    assert _moved(tmp_path, withdrew=True, drained=True) == (1, 0)
