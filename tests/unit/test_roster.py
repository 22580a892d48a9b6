"""The roster: parsing with clear errors, signing, verification, serials, queries, CLI."""

from __future__ import annotations

import contextlib
import ipaddress
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from wgcast.cli.main import main
from wgcast.keys import b64, generate_private, public_from_private, router_id
from wgcast.roster import RosterError, accept_newer, generate_mesh_key, parse

K1 = public_from_private(generate_private())
K2 = public_from_private(generate_private())
K3 = public_from_private(generate_private())


def text(serial: int = 1, extra: str = "") -> str:
    return f"""
serial = {serial}
mesh_prefixes = ["fd5a::/16", "10.66.0.0/16"]
{extra}
[[members]]
name = "n1"
public_key = "{b64(K1)}"
prefixes = ["fd5a:1::/48", "10.66.1.0/24"]
groups = ["fd5a:ffff::53/128"]

[[members]]
name = "n2"
public_key = "{b64(K2)}"
prefixes = ["fd5a:2::/48"]
groups = ["fd5a:ffff::53/128"]
"""


def net(s: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(s)


def test_queries() -> None:
    r = parse(text())
    assert r.may_originate(K1, net("fd5a:1::1/128"))  # inside its space
    assert r.may_originate(K1, net("fd5a:1::/48"))
    assert r.may_originate(K2, net("fd5a:ffff::53/128"))  # a group both serve
    assert not r.may_originate(K2, net("fd5a:1::1/128"))  # another member's space
    assert not r.may_originate(K3, net("fd5a:3::1/128"))  # not a member
    assert not r.may_originate(K1, net("fd5a:ffff::54/128"))  # not its group
    assert r.why_refused(router_id(K1), net("2000::/3")) == "outside mesh space"
    assert r.why_refused(router_id(K1), net("8.8.8.0/24")) == "outside mesh space"
    assert r.why_refused(b"\x01" * 8, net("fd5a:1::1/128")) == "not in roster"
    assert r.why_refused(router_id(K2), net("fd5a:1::1/128")) == "not allowed"
    assert r.why_refused(router_id(K1), net("10.66.1.7/32")) is None
    assert r.is_group(net("fd5a:ffff::53/128")) and not r.is_group(net("fd5a:1::/48"))


def test_sign_verify_and_tamper() -> None:
    priv, pub = generate_mesh_key()
    signed = parse(text()).signed(priv)
    again = parse(signed.to_toml())
    again.verify(pub)  # survives the round trip through TOML
    assert again.canonical() == parse(text()).canonical()
    tampered = parse(signed.to_toml().replace("fd5a:2::/48", "fd5a:3::/48"))
    with pytest.raises(RosterError, match="bad signature"):
        tampered.verify(pub)
    _, other = generate_mesh_key()
    with pytest.raises(RosterError, match="not by the mesh key"):
        again.verify(other)
    with pytest.raises(RosterError, match="not signed"):
        parse(text()).verify(pub)


def test_serial_and_expiry() -> None:
    priv, pub = generate_mesh_key()
    now = datetime.now(UTC)
    r5 = parse(text(5)).signed(priv)
    r4 = parse(text(4)).signed(priv)
    assert accept_newer(None, r5, pub, now) is r5
    with pytest.raises(RosterError, match="older"):
        accept_newer(r5, r4, pub, now)
    old = parse(text(6, f'not_after = "{(now - timedelta(days=1)).isoformat()}"')).signed(priv)
    with pytest.raises(RosterError, match="expired"):
        accept_newer(r5, old, pub, now)


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda t: t.replace("serial = 1", 'serial = "one"'), "serial: expected an integer"),
    (lambda t: t.replace('mesh_prefixes = ["fd5a::/16", "10.66.0.0/16"]', "mesh_prefixes = []"),
     "at least one prefix"),
    (lambda t: t.replace('"fd5a:2::/48"', '"fd5a:1:0:1::/64"'), "overlaps fd5a:1::/48"),
    (lambda t: t.replace('"fd5a:2::/48"', '"fd00:2::/48"'), "outside mesh_prefixes"),
    (lambda t: t.replace('name = "n2"', 'name = "n1"'), "appears twice"),
    (lambda t: t.replace(b64(K2), b64(K1)), "also the key of 'n1'"),
    (lambda t: t.replace(b64(K2), "nope"), "members[1].public_key"),
    (lambda t: t.replace('"fd5a:2::/48"', '"fd5a:2::1/48"'), "is not a prefix"),
    (lambda t: t.replace("[[members]]", "[[member]]", 1), "unknown key 'member'"),
    (lambda t: t + "\nnot toml [", "not valid TOML"),
])
def test_errors_name_the_key(mutate: object, message: str) -> None:
    with pytest.raises(RosterError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse(mutate(text()), "r.toml")  # type: ignore[operator]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_any_text_parses_or_is_refused_clearly(t: str) -> None:
    with contextlib.suppress(RosterError):
        parse(t)


def test_cli_keygen_sign_verify_show(tmp_path: Path) -> None:
    runner = CliRunner()
    key = tmp_path / "mesh.key"
    res = runner.invoke(main, ["roster", "keygen", "-o", str(key)])
    assert res.exit_code == 0, res.output
    pub = res.output.strip()
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    again = runner.invoke(main, ["roster", "keygen", "-o", str(key)])
    assert again.exit_code != 0 and "not overwriting" in again.output
    path = tmp_path / "roster.toml"
    path.write_text(text(3))
    assert runner.invoke(main, ["roster", "verify", str(path), "-m", pub]).exit_code == 1
    res = runner.invoke(main, ["roster", "sign", str(path), "-k", str(key)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, ["roster", "verify", str(path), "-m", pub])
    assert res.exit_code == 0 and "serial 3, 2 members" in res.output
    res = runner.invoke(main, ["roster", "show", str(path), "--json"])
    assert res.exit_code == 0 and '"signed": true' in res.output
    path.write_text(path.read_text().replace("serial = 3", "serial = 4"))
    res = runner.invoke(main, ["roster", "verify", str(path), "-m", pub])
    assert res.exit_code == 1 and "bad signature" in res.output


LAN_R = """
[[members]]
name = "lan-r1"
router_id = "02:00:00:ff:fe:00:00:07"
prefixes = ["fd5a:1a::/48"]
"""


def test_a_router_that_is_not_wgcast_is_a_member_by_router_id() -> None:
    """babeld/BIRD/FRR behind a [[lan]]: named by its Babel router-id, its prefixes pass
    every node's check (unsigned: it cannot sign); a roster with one survives signing and
    the TOML round trip, and a roster without any keeps its old canonical form."""
    lan_rid = bytes.fromhex("020000fffe000007")
    r = parse(text() + LAN_R)
    m = r.member_by_router_id(lan_rid)
    assert m is not None and m.name == "lan-r1" and m.public_key == b"" and m.sign_key is None
    assert r.why_refused(lan_rid, net("fd5a:1a::1/128")) is None
    assert r.why_refused(lan_rid, net("fd5a:1::1/128")) == "not allowed"
    assert r.member(b"") is None
    priv, pub = generate_mesh_key()
    again = parse(parse(text() + LAN_R).signed(priv).to_toml())
    again.verify(pub)
    assert again.member_by_router_id(lan_rid) == m
    assert b"router_id" not in parse(text()).canonical()
    assert parse(text() + LAN_R.replace("fe:00:00:07", "fe:00:00:08")).canonical() != \
        r.canonical()
    for extra, want in (
            (LAN_R.replace('prefixes', f'public_key = "{b64(K3)}"\nprefixes'),
             "members[2].router_id: expected either public_key"),
            (LAN_R.replace("02:00:00:ff:fe:00:00:07", "zz"), "members[2].router_id: expected "
             "a Babel router-id"),
            (LAN_R.replace("02:00:00:ff:fe:00:00:07", router_id(K1).hex()),
             "members[2]: router-id " + ":".join(f"{b:02x}" for b in router_id(K1))
             + " is also the router-id of 'n1'")):
        with pytest.raises(RosterError, match=re.escape(want)):
            parse(text() + extra)
