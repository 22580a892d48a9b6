"""Catchments on real daemons with in-memory back ends: a line a - b - c, instances of
one anycast prefix at a and c. Each node's table names its own origin and the one each
neighbour selected (announced, or via us by split horizon), and they agree with what the
neighbours themselves selected; the web server and the metrics serve the same table."""

from __future__ import annotations

import asyncio
import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest
from daemon_fakes import Mesh, config_text, running, until
from prometheus_client import CollectorRegistry, generate_latest

from wgcast import keys
from wgcast.cli.catchments import render
from wgcast.daemon.catchments import CatchmentCollector
from wgcast.daemon.config import ConfigError, loads
from wgcast.daemon.runtime import Daemon
from wgcast.daemon.web import WebServer, parse_query

ANY = ipaddress.ip_network("10.9.0.1/32")


def _line(tmp: Path) -> Mesh:
    priv = {n: keys.generate_private() for n in "abc"}
    pub = {n: keys.public_from_private(k) for n, k in priv.items()}
    links = {"a": "b", "b": "ac", "c": "b"}
    mesh = Mesh()
    for n in "abc":
        mesh.add(n, priv[n], config_text(
            n, str(tmp), {p: pub[p] for p in links[n]},
            f'name = "{n}"\nanycast = ["10.9.0.0/24"]\naddresses = ["10.0.{ord(n)}.0/24"]'))
    return mesh


def _origin_at(t: dict[str, Any], prefix: str = str(ANY)) -> str | None:
    row = next((r for r in t["prefixes"] if r["prefix"] == prefix), None)
    return None if row is None else row["origin"]


def _neighbour(t: dict[str, Any], name: str) -> dict[str, Any]:
    row = next(r for r in t["prefixes"] if r["prefix"] == str(ANY))
    return next(n for n in row["neighbours"] if n["name"] == name)


async def _get(port: int, target: str) -> tuple[str, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return head.split(b"\r\n")[0].decode(), body


def test_each_node_sees_its_own_and_its_neighbours_selections(tmp_path: Path) -> None:
    async def main() -> None:
        mesh = _line(tmp_path)
        a, b, c = (mesh.nodes[n].daemon for n in "abc")
        async with running(mesh):
            await a.serve(ANY)
            await c.serve(ANY)
            await until(lambda: _origin_at(b.catchment_table()) in ("a", "c"),
                        what="b selects an instance")
            tb = b.catchment_table()
            # b hears both instances, each announced by its origin.
            assert _neighbour(tb, "a")["origin"] == "a"
            assert _neighbour(tb, "c")["origin"] == "c"
            assert {_neighbour(tb, n)["seen"] for n in "ac"} == {"announced"}
            chosen = _origin_at(tb)
            assert chosen is not None
            row = tb["prefixes"][0]
            assert row["via"] == chosen  # the origin is its own next hop here
            # a and c say what b selected: announced to the one it does not use, via us
            # (split horizon) to the one it does.
            for d, name in ((a, "a"), (c, "c")):
                t = d.catchment_table()
                assert _origin_at(t) == name and t["prefixes"][0]["via"] == "local"
                wanted = (chosen, keys.router_id(mesh.nodes[chosen].public).hex())

                def learnt(d: Daemon = d, wanted: tuple[str, str] = wanted) -> bool:
                    return _neighbour(d.catchment_table(), "b")["origin"] in wanted

                await until(learnt, what=f"{name} learns b's choice")
                seen = _neighbour(d.catchment_table(), "b")["seen"]
                assert seen == ("via_us" if chosen == name else "announced")
            # The instance b uses goes: b, and what a/c know of b, move to the other.
            other = "c" if chosen == "a" else "a"
            await mesh.nodes[chosen].daemon.unserve(ANY, wait=1.0)
            await until(lambda: _origin_at(b.catchment_table()) == other,
                        what="b moves to the other instance")
            od = mesh.nodes[other].daemon
            await until(lambda: _neighbour(od.catchment_table(), "b")["seen"] == "via_us",
                        what="the remaining instance sees b come through it")
            # Unicast prefixes only with everything=True; an asked prefix always shows.
            assert all(r["prefix"] == str(ANY) for r in b.catchment_table()["prefixes"])
            assert len(b.catchment_table(everything=True)["prefixes"]) > 1
            asked = b.catchment_table([ipaddress.ip_network("10.9.0.99/32")])
            assert asked["prefixes"][0]["origin"] is None
            text = render(b.catchment_table())
            assert "selected via" in text and f"{other}: 3" in text

    asyncio.run(main())


def test_web_server_and_metrics_serve_the_table(tmp_path: Path) -> None:
    async def main() -> None:
        mesh = _line(tmp_path)
        b = mesh.nodes["b"].daemon
        async with running(mesh):
            await mesh.nodes["a"].daemon.serve(ANY)
            await until(lambda: _origin_at(b.catchment_table()) == "a", what="b -> a")
            web = WebServer(lambda only, everything: b.catchment_table(only, everything),
                            "127.0.0.1", 0)
            await web.start()
            try:
                port = web.bound_port
                assert port is not None
                status, body = await _get(port, "/catchments.json")
                assert status == "HTTP/1.1 200 OK"
                data = json.loads(body)
                assert data["node"] == "b" and _origin_at(data) == "a"
                assert {n["name"] for n in data["neighbours"]} == {"a", "c"}
                status, body = await _get(port, "/")
                assert status.endswith("200 OK") and b"catchments.json" in body
                status, body = await _get(port, "/catchments.json?prefix=nope")
                assert status.endswith("400 Bad Request") and b"nope" in body
                assert (await _get(port, "/etc/passwd"))[0].endswith("404 Not Found")
                status, body = await _get(port, "/catchments.json?all=1")
                assert len(json.loads(body)["prefixes"]) > 1
            finally:
                await web.stop()
            reg = CollectorRegistry(auto_describe=False)
            reg.register(CatchmentCollector(b.catchment_table))
            text = generate_latest(reg).decode()
            assert f'wgcast_catchment{{node="b",origin="a",prefix="{ANY}"}} 1.0' in text
            assert ('wgcast_neighbour_catchment{node="b",origin="a",peer="a",'
                    f'prefix="{ANY}"}} 1.0') in text

    asyncio.run(main())


def test_query_and_config_errors_are_specific() -> None:
    assert parse_query("prefix=10.9.0.1/32,fd00::1&all=1") == (
        [ipaddress.ip_network("10.9.0.1/32"), ipaddress.ip_network("fd00::1/128")], True)
    with pytest.raises(ValueError, match="expected an IP prefix, got 'x'"):
        parse_query("prefix=x")
    base = 'interface = "wg0"\n'
    assert loads(base + "web = true").web is not None
    assert str(loads(base + 'web = "[::1]"').web) == "[::1]:9587"
    assert loads(base + "web = false").web is None
    with pytest.raises(ConfigError, match="web: expected true, false"):
        loads(base + "web = 3")
    with pytest.raises(ConfigError, match="name: expected a name"):
        loads(base + 'name = "two words"')


def chromium() -> str | None:
    import shutil

    return shutil.which("chromium") or shutil.which("chromium-browser")


async def browse(url: str, out: Path, profile: Path, size: str = "1000,560",
                 budget_ms: int = 3000) -> tuple[str, Path]:
    """Load `url` in headless Chromium: (the DOM after its scripts ran, a screenshot)."""
    exe = chromium()
    assert exe is not None
    base = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--hide-scrollbars", f"--user-data-dir={profile}", f"--window-size={size}",
            f"--virtual-time-budget={budget_ms}"]
    dom = await asyncio.create_subprocess_exec(
        *base, "--dump-dom", url, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL)
    html, _ = await asyncio.wait_for(dom.communicate(), 120)
    shot = await asyncio.create_subprocess_exec(
        *base, f"--screenshot={out}", url, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL)
    await asyncio.wait_for(shot.wait(), 120)
    return html.decode(), out


@pytest.mark.skipif(chromium() is None, reason="needs chromium (apt-get install chromium)")
def test_the_page_in_a_headless_browser(tmp_path: Path) -> None:
    async def main() -> None:
        mesh = _line(tmp_path)
        b = mesh.nodes["b"].daemon
        async with running(mesh):
            await mesh.nodes["a"].daemon.serve(ANY)
            await mesh.nodes["c"].daemon.serve(ANY)
            await until(lambda: [n["origin"] for r in b.catchment_table()["prefixes"]
                                 for n in r["neighbours"]] == ["a", "c"],
                        what="b knows every neighbour's choice")
            web = WebServer(lambda only, everything: b.catchment_table(only, everything),
                            "127.0.0.1", 0)
            await web.start()
            try:
                html, shot = await browse(f"http://127.0.0.1:{web.bound_port}/",
                                          tmp_path / "catchments.png", tmp_path / "chrome")
            finally:
                await web.stop()
        print(f"\nscreenshot: {shot}")
        # The script ran: the three nodes are drawn, each with the origin it selected.
        assert 'data-name="b"' in html and 'data-name="a" data-origin="a"' in html
        assert 'data-name="c" data-origin="c"' in html
        assert "data-updated=" in html and 'class="stale"' not in html
        assert shot.exists() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert shot.stat().st_size > 10_000

    asyncio.run(main())


def test_change_log_records_moves_once_and_stays_bounded() -> None:
    from wgcast.daemon.catchments import ChangeLog

    def table(t: float, own: str, nb: str | None) -> dict[str, Any]:
        return {"node": "b", "time": t, "prefixes": [
            {"prefix": "p", "origin": own, "neighbours": [{"name": "a", "origin": nb}]}]}

    log = ChangeLog(keep=3)
    log.observe(table(1.0, "a", "a"))
    log.observe(table(2.0, "a", "a"))
    assert log.changes == []
    log.observe(table(3.0, "c", None))
    assert log.changes == [{"time": 3.0, "prefix": "p", "node": "b", "from": "a", "to": "c"},
                           {"time": 3.0, "prefix": "p", "node": "a", "from": "a", "to": None}]
    for t in (4.0, 5.0):
        log.observe(table(t, "a" if t == 4.0 else "c", None))
    assert len(log.changes) == 3 and log.changes[-1]["time"] == 5.0


def test_dashboard_queries_name_exported_metrics() -> None:
    import re

    root = Path(__file__).resolve().parents[2]
    dash = json.loads((root / "docs" / "grafana-catchments.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\bwgcast_[a-z_]+", e)}
    src = "".join((root / "src" / "wgcast" / "daemon" / f).read_text()
                  for f in ("catchments.py", "metrics.py"))
    assert used and all(f'"{m}"' in src for m in used), used
