"""Config reload (SIGHUP, `wgcast reload`) on the real `Daemon` with in-memory back ends:
a good file is applied (peers added and removed, costs, timers, own addresses), a bad
one is refused with the messages of `wgcast check` and the running config stays."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from pathlib import Path

import pytest
from daemon_fakes import Mesh, config_text, running, until

from wgcast import keys
from wgcast.daemon.config import ConfigError, load
from wgcast.daemon.reload import diff, refusals

B_NET = ipaddress.ip_network("10.0.2.0/24")
C_NET = ipaddress.ip_network("10.0.3.0/24")
A_NET = ipaddress.ip_network("10.0.1.0/24")


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def _trio(tmp: Path) -> tuple[Mesh, Path, dict[str, bytes], dict[str, bytes]]:
    """a knows b only (from a file); c knows a and originates C_NET; b originates B_NET."""
    priv = {n: keys.generate_private() for n in "abc"}
    pub = {n: keys.public_from_private(k) for n, k in priv.items()}
    mesh = Mesh()
    a_file = tmp / "a.toml"
    _write(a_file, config_text("a", str(tmp), {"b": pub["b"]},
                               peer_extra={"b": 'may_originate = ["10.0.0.0/8"]'}))
    mesh.add("a", priv["a"], load(a_file))
    mesh.add("b", priv["b"], config_text("b", str(tmp), {"a": pub["a"]},
                                         'addresses = ["10.0.2.0/24"]'))
    mesh.add("c", priv["c"], config_text("c", str(tmp), {"a": pub["a"]},
                                         'addresses = ["10.0.3.0/24"]',
                                         {"a": 'may_originate = ["10.0.0.0/8"]'}))
    # c is a WireGuard peer of a's device already (the operator added it), not yet
    # in a's config.
    a_dev = mesh.nodes["a"].device
    a_dev.peers[pub["c"]] = []
    a_dev.endpoints[pub["c"]] = None
    return mesh, a_file, priv, pub


def test_a_good_file_is_applied_peers_addresses_costs_and_timers(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        mesh, a_file, _priv, pub = _trio(tmp_path)
        a, c = mesh.nodes["a"], mesh.nodes["c"]
        async with running(mesh):
            await until(lambda: a.device.holder(B_NET) == pub["b"], what="B_NET via b")
            assert a.device.holder(C_NET) is None
            # The new file: c added with a cost, b removed, an own address, a timer.
            _write(a_file, config_text(
                "a", str(tmp_path), {"c": pub["c"]}, 'addresses = ["10.0.1.0/24"]',
                {"c": 'cost = 7\nmay_originate = ["10.0.0.0/8"]'}, timers='hello = "150ms"'))
            with caplog.at_level(logging.INFO, logger="wgcast"):
                ok, what = await a.daemon.reload_file()
            assert ok, what
            assert what == ("peers added: c; peers removed: b; changed: addresses, timers")
            lines = [r.getMessage() for r in caplog.records if "reload" in r.getMessage()]
            assert lines == [f"reload: {what}"]
            await until(lambda: a.device.holder(C_NET) == pub["c"], what="C_NET via c")
            await until(lambda: a.device.holder(B_NET) is None, what="B_NET gone")
            await until(lambda: c.device.holder(A_NET) == pub["a"], what="A_NET at c")
            assert sorted(p["name"] for p in a.daemon.peer_table()) == ["c"]
            assert a.daemon.node is not None
            assert a.daemon.node.config.hello_interval == 0.15
            assert a.daemon.node.neighbours["c"].extra_cost == 7
            st = a.daemon.status()["reload"]
            assert st["reloads"] == 1 and st["refused"] == 0 and st["last"]["ok"]

    asyncio.run(main())


def test_a_bad_file_is_refused_with_check_s_messages_and_the_config_stays(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        mesh, a_file, _priv, pub = _trio(tmp_path)
        a = mesh.nodes["a"]
        async with running(mesh):
            await until(lambda: a.device.holder(B_NET) == pub["b"], what="B_NET via b")
            before = a.daemon.config
            good = a_file.read_text()
            _write(a_file, good.replace('profile = "fast"', 'profile = "fast"\nhello = "-1s"')
                   + '[[peers]]\npublic_key = "nope"\n')
            with pytest.raises(ConfigError) as check:
                load(a_file)
            with caplog.at_level(logging.INFO, logger="wgcast"):
                ok, why = await a.daemon.reload_file()
            assert not ok
            assert why == "\n".join(check.value.errors)
            assert len(check.value.errors) >= 2
            assert a.daemon.config is before
            logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
            assert logged == [f"reload refused (the running config stays): {m}"
                              for m in check.value.errors]
            # A restart-only key: refused by name, nothing else applied.
            _write(a_file, good.replace('interface = "wg-a"', 'interface = "wg-x"')
                   .replace("probe_port = 0", 'probe_port = 0\naddresses = ["10.0.1.0/24"]'))
            ok, why = await a.daemon.reload_file()
            assert not ok and "interface cannot change while wgcast runs (wg-a -> wg-x)" \
                in why
            assert a.daemon.config is before
            assert a.daemon.status()["reload"]["refused"] == 2
            # Still routing as before.
            await asyncio.sleep(0.3)
            assert a.device.holder(B_NET) == pub["b"]

    asyncio.run(main())


def test_diff_names_what_changed_and_refusals_name_the_key(tmp_path: Path) -> None:
    pk = keys.b64(keys.public_from_private(keys.generate_private()))
    base = config_text("a", str(tmp_path), {}) + \
        f'[[peers]]\nname = "p"\npublic_key = "{pk}"\n'
    old = load(_write(tmp_path / "o.toml", base))
    new = load(_write(tmp_path / "n.toml", base.replace(
        f'public_key = "{pk}"', f'public_key = "{pk}"\ncost = 5').replace(
        "probe_port = 0", 'probe_port = 0\nport = 7000\n[link]\nbase_cost = 40')))
    assert diff(old, new).describe() == "peers changed: p (cost); changed: link"
    assert refusals(old, new) == [
        f"{new.path}: port cannot change while wgcast runs (6696 -> 7000); restart "
        "`wgcast run` to change it"]
    assert not diff(old, old)


def test_groups_added_removed_and_changed_by_a_reload(tmp_path: Path) -> None:
    """MembershipService.reload with the fake daemon of test_membership_api: a new static
    group is served, a removed one withdrawn gracefully and forgotten, a new metric
    announced again, a new health check gates its group."""
    from test_membership_api import G1, G3, FakeDaemon, make_config

    from wgcast.anycast.group import DRAIN_METRIC
    from wgcast.daemon.api import ApiServer
    from wgcast.daemon.membership import MembershipService

    flag = tmp_path / "bad"
    static = f'[[groups]]\nprefix = "{G3}"\nstatic = true\n'
    check = ('[[groups.health]]\ntype = "exec"\n'
             f'command = ["/bin/sh", "-c", "test ! -e {flag}"]\n'
             'interval = "20ms"\ntimeout = "20ms"\nrise = 1\nfall = 1\n')

    async def go() -> None:
        d = FakeDaemon(make_config(str(tmp_path)))
        api = ApiServer(d.config, d)
        ms = MembershipService(d.config, api, d, d.engine)
        await ms.start()
        g3 = ipaddress.ip_network(G3)
        try:
            assert g3 not in ms.groups
            ms.reload(make_config(str(tmp_path), static))           # added
            await until(lambda: ("serve", G3, None) in d.calls, what="G3 served")
            ms.reload(make_config(str(tmp_path), static + "metric = 50\n"))  # changed
            # The daemon reads the metric from its config: a second serve announces it.
            await until(lambda: d.calls.count(("serve", G3, None)) == 2,
                        what="G3 announced again")
            flag.write_text("x")
            ms.reload(make_config(str(tmp_path), static + check))   # a failing check
            await until(lambda: g3 not in d.served, what="G3 withdrawn (unhealthy)")
            flag.unlink()
            await until(lambda: g3 in d.served, what="G3 served again (healthy)")
            n = len(d.calls)
            ms.reload(make_config(str(tmp_path)))                   # removed
            await until(lambda: g3 not in ms.groups, what="G3 forgotten")
            assert g3 not in d.served
            assert d.calls[n][:3] == ("serve", G3, DRAIN_METRIC)  # graceful, like a drain
            assert d.calls[-1][:2] == ("unserve", G3)
            assert ipaddress.ip_network(G1) in ms.groups
        finally:
            await ms.stop()

    asyncio.run(go())


def test_a_dual_stack_entry_s_one_check_gates_both_prefixes(tmp_path: Path) -> None:
    """One `[[groups]]` entry with two prefixes and one check, added by a reload: both
    served; the check fails: both withdrawn; it passes again: both served."""
    from test_membership_api import FakeDaemon, make_config

    from wgcast.daemon.api import ApiServer
    from wgcast.daemon.membership import MembershipService

    flag = tmp_path / "bad"
    v6, other = "fd00:a::60/128", "fd00:a::61/128"
    dual = (f'[[groups]]\nprefix = ["{v6}", "{other}"]\nstatic = true\n'
            '[[groups.health]]\ntype = "exec"\n'
            f'command = ["/bin/sh", "-c", "test ! -e {flag}"]\n'
            'interval = "20ms"\ntimeout = "20ms"\nrise = 1\nfall = 1\n')
    both = {ipaddress.ip_network(v6), ipaddress.ip_network(other)}

    async def go() -> None:
        d = FakeDaemon(make_config(str(tmp_path)))
        api = ApiServer(d.config, d)
        ms = MembershipService(d.config, api, d, d.engine)
        await ms.start()
        try:
            ms.reload(make_config(str(tmp_path), dual))
            await until(lambda: both <= set(d.served), what="both prefixes served")
            flag.write_text("x")
            await until(lambda: not both & set(d.served), what="both withdrawn")
            flag.unlink()
            await until(lambda: both <= set(d.served), what="both served again")
        finally:
            await ms.stop()

    asyncio.run(go())


def test_a_named_check_changed_changes_the_groups_that_list_it(tmp_path: Path) -> None:
    text = ('interface = "wg0"\nanycast = ["fd00:a::/64"]\n'
            '[[health_checks]]\nname = "db"\ntype = "tcp"\ntarget = "[::1]:5432"\n'
            '[[groups]]\nprefix = "fd00:a::53/128"\nhealth_checks = ["db"]\n'
            '[[groups]]\nprefix = "fd00:a::80/128"\n')
    old = load(_write(tmp_path / "o.toml", text))
    new = load(_write(tmp_path / "n.toml", text.replace("5432", "5433")))
    assert diff(old, new).describe() == "groups changed: fd00:a::53/128 (health)"
