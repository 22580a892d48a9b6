"""wgcast.daemon.config: good files load, every bad one names file, key and expectation."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wgcast.cli.check import check
from wgcast.daemon.config import (
    Config,
    ConfigError,
    Endpoint,
    GroupConf,
    HealthConf,
    Link,
    PeerConf,
    Timers,
    format_duration,
    from_mapping,
    load,
    loads,
    parse_duration,
    parse_endpoint,
)

K1 = "pOCSkrZRwni5dyxWn1+puxPZBrRqtoyd+dwrRAn4ogk="
K2 = "zo060cy2M+x7cMF4FKXHbs0CloUFDTRHRboFhw5YfVk="
K3 = "Xf7dO2vUf2+ijuFdlp1bsOpTd01Ii9r53xxuASSz7yI="

DOCS = Path(__file__).resolve().parents[2] / "docs" / "config.md"

FULL = f"""
interface = "wg0"
backend = "netlink"
addresses = ["fd00:1::1/128", "10.1.0.0/24"]
anycast = ["fd00:a::53/128", "fd00:b::/64", "10.99.0.0/24"]
api_socket = "/run/wgcast/custom.sock"
api_socket_mode = "0640"
api_socket_group = "wgcast"
state_file = "/var/lib/wgcast/custom.state"
port = 7000
metrics = "[::1]:9100"
route_selection = "sticky"

[timers]
profile = "fast"
update = "3s"
retract_grace = "1.5s"

[link]
base_cost = 64
rtt_cost_per_ms = 0
max_rtt_cost = 100

[[peers]]
name = "n2"
public_key = "{K2}"
endpoints = ["198.18.0.2:51820", "[2001:db8::2]:51820", "N2.Example.net:51820"]
may_originate = ["fd00:2::/64"]
cost = 7

[[peers]]
public_key = "{K3}"
may_originate = []

[[groups]]
prefix = "fd00:a::53/128"
metric = 5
address_interface = "dummy0"
allow_uids = [1000, 1000, 1001]
allow_gids = [100]

[[groups.health]]
type = "exec"
command = ["/bin/true", "-x"]
interval = "2s"
timeout = "1s"
rise = 3
fall = 1

[[groups.health]]
type = "tcp"
target = "[::1]:53"

[[groups.health]]
type = "udp"
target = "127.0.0.1:53"
send = "ping"
expect = "pong"

[[groups.health]]
type = "http"
target = "https://localhost/health"
status = 204

[[groups.health]]
type = "dns"
target = "[::1]"
query = "example.org."
qtype = "aaaa"

[[groups]]
prefix = "fd00:b::/64"
static = true

[[groups]]
prefix = "10.99.0.53/32"
"""


def write(tmp_path: Path, text: str, name: str = "wg0.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def errors_of(tmp_path: Path, text: str) -> tuple[str, list[str]]:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load(path)
    assert info.value.path == str(path)
    assert str(info.value) == "\n".join(info.value.errors)
    return str(path), info.value.errors


def assert_error(tmp_path: Path, text: str, key: str, *expected: str) -> list[str]:
    """Loading `text` fails with an error naming the file, `key` and the expectation."""
    file, errors = errors_of(tmp_path, text)
    prefix = f"{file}: {key}: "
    matching = [e for e in errors if e.startswith(prefix)]
    assert matching, f"no error for {key!r} in {errors}"
    assert any(all(x in e for x in expected) for e in matching), (expected, matching)
    return errors


BASE = 'interface = "wg0"\n'


# ------------------------------------------------------------------------- good configs


def test_minimal_defaults() -> None:
    c = loads(BASE, "m.toml")
    assert c == Config(interface="wg0", path="m.toml")
    assert c.backend == "auto"
    assert c.addresses == () and c.anycast == ()
    assert c.api_socket == "/run/wgcast/wg0.sock"
    assert c.api_socket_mode == 0o660
    assert c.api_socket_group is None
    assert c.state_file == "/var/lib/wgcast/wg0.state"
    assert c.port == 6696
    assert c.metrics is None
    assert c.route_selection == "shortest"
    assert c.timers == Timers("default", 0.2, 3, 4.0, 0.5)
    assert c.link == Link(32, 4, 2048)
    assert c.peers == () and c.groups == ()


def test_full(tmp_path: Path) -> None:
    path = write(tmp_path, FULL)
    c = load(path)
    assert c.path == str(path)
    assert c.backend == "netlink"
    assert c.addresses == (
        ipaddress.ip_network("fd00:1::1/128"), ipaddress.ip_network("10.1.0.0/24"),
    )
    assert len(c.anycast) == 3
    assert c.api_socket == "/run/wgcast/custom.sock"
    assert c.api_socket_mode == 0o640
    assert c.api_socket_group == "wgcast"
    assert c.state_file == "/var/lib/wgcast/custom.state"
    assert c.port == 7000
    assert c.metrics == Endpoint("::1", 9100)
    assert c.route_selection == "sticky"
    assert c.timers == Timers("fast", 0.05, 3, 3.0, 1.5)
    assert c.timers.dead_interval == pytest.approx(0.15)
    assert c.link == Link(64, 0, 100)

    n2, n3 = c.peers
    assert n2 == PeerConf(
        K2, "n2",
        (Endpoint("198.18.0.2", 51820), Endpoint("2001:db8::2", 51820),
         Endpoint("n2.example.net", 51820)),
        (ipaddress.ip_network("fd00:2::/64"),), 7,
    )
    assert n2.key == bytes.fromhex(
        "ce8d3ad1ccb633ec7b70c17814a5c76ecd029685050d344745ba05870e587d59"
    )
    assert n3.name == K3[:8] and n3.may_originate == () and n3.endpoints == ()
    assert c.peer("n2") is n2 and c.peer(K3) is n3 and c.peer("nope") is None

    g1, g2, g3 = c.groups
    assert g1.prefix == ipaddress.ip_network("fd00:a::53/128")
    assert (g1.static, g1.metric, g1.address_interface) == (False, 5, "dummy0")
    assert g1.allow_uids == (1000, 1001) and g1.allow_gids == (100,)
    ex, tcp, udp, http, dns = g1.health
    assert ex == HealthConf("exec", 2.0, 1.0, 3, 1, command=("/bin/true", "-x"))
    assert tcp == HealthConf("tcp", target="[::1]:53", endpoint=Endpoint("::1", 53))
    assert udp.endpoint == Endpoint("127.0.0.1", 53)
    assert (udp.send, udp.expect) == ("ping", "pong")
    assert http.target == "https://localhost/health"
    assert http.endpoint == Endpoint("localhost", 443) and http.status == 204
    assert dns.endpoint == Endpoint("::1", 53)
    assert (dns.query, dns.qtype) == ("example.org.", "AAAA")
    assert g2 == GroupConf(ipaddress.ip_network("fd00:b::/64"), static=True)
    assert g3.prefix == ipaddress.ip_network("10.99.0.53/32")
    assert c.group("fd00:b::/64") is g2 and c.group("fd00:c::/64") is None


def test_docs_examples_load() -> None:
    blocks = re.findall(r"```toml\n(.*?)```", DOCS.read_text(), re.S)
    assert len(blocks) >= 2
    for block in blocks:
        loads(block, str(DOCS))


def test_profile_overrides() -> None:
    c = loads(BASE + '[timers]\nprofile = "fast"\nhello = "100ms"\n')
    assert c.timers == Timers("fast", 0.1, 3, 2.0, 0.5)
    c = loads(BASE + "[timers]\ndead = 5\n")
    assert c.timers == Timers("default", 0.2, 5, 4.0, 0.5)


def test_integer_mode_and_gid() -> None:
    c = loads(BASE + "api_socket_mode = 0o600\napi_socket_group = 42\n")
    assert c.api_socket_mode == 0o600 and c.api_socket_group == 42
    c = loads(BASE + 'api_socket_mode = "600"\napi_socket_group = "42"\n')
    assert c.api_socket_mode == 0o600 and c.api_socket_group == 42


def test_metrics_default_port() -> None:
    assert loads(BASE + 'metrics = "127.0.0.1"\n').metrics == Endpoint("127.0.0.1", 9586)


def test_bare_address_is_host_prefix() -> None:
    c = loads(BASE + 'addresses = ["192.0.2.7", "fd00::7"]\n')
    assert c.addresses == (
        ipaddress.ip_network("192.0.2.7/32"), ipaddress.ip_network("fd00::7/128"),
    )


def test_group_inside_larger_anycast_prefix() -> None:
    c = loads(BASE + 'anycast = ["fd00:a::/48"]\n[[groups]]\nprefix = "fd00:a::53/128"\n')
    assert c.groups[0].prefix == ipaddress.ip_network("fd00:a::53/128")


def test_from_mapping() -> None:
    c = from_mapping({"interface": "wg9", "peers": [{"public_key": K1}]})
    assert c.peers[0].name == K1[:8] and c.path == "<dict>"


# ------------------------------------------------------------------------------ durations


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("200ms", 0.2), ("4s", 4.0), ("1.5s", 1.5), ("2m", 120.0), ("1h", 3600.0),
     ("1m30s", 90.0), ("250us", 0.00025), (".5s", 0.5), ("3.s", 3.0), (" 4s ", 4.0)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [("4", 'a unit: "4s"'), ("", "expected a duration"), ("abc", "expected a duration"),
     ("0s", "positive"), ("0ms", "positive"), ("-1s", "positive"), ("4 s", "expected"),
     ("1d", "expected a duration"), ("s", "expected"), ("1e3s", "expected"),
     ("9" * 400 + "h", "finite")],
)
def test_parse_duration_errors(text: str, fragment: str) -> None:
    with pytest.raises(ValueError, match="expected") as info:
        parse_duration(text)
    assert fragment in str(info.value)


def test_parse_duration_rejects_non_strings() -> None:
    with pytest.raises(ValueError, match=r'unit: "4s"'):
        parse_duration(4)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration(None)  # type: ignore[arg-type]


@pytest.mark.parametrize("seconds", [0.01, 0.05, 0.2, 0.25, 1.0, 1.5, 4.0, 60.0, 90.0, 600.0])
def test_format_duration_round_trips(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds)


# ------------------------------------------------------------------------------ endpoints


@pytest.mark.parametrize(
    ("text", "endpoint", "shown"),
    [("198.18.0.2:51820", Endpoint("198.18.0.2", 51820), "198.18.0.2:51820"),
     ("[2001:DB8::2]:1", Endpoint("2001:db8::2", 1), "[2001:db8::2]:1"),
     ("Host.Example:65535", Endpoint("host.example", 65535), "host.example:65535")],
)
def test_parse_endpoint(text: str, endpoint: Endpoint, shown: str) -> None:
    assert parse_endpoint(text) == endpoint
    assert str(endpoint) == shown
    assert Endpoint.parse(shown) == endpoint


def test_endpoint_ip() -> None:
    assert Endpoint("2001:db8::2", 1).ip == ipaddress.ip_address("2001:db8::2")
    assert Endpoint("host.example", 1).ip is None


@pytest.mark.parametrize(
    ("text", "fragment"),
    [("2001:db8::2:51820", 'did you mean "[2001:db8::2]:51820"?'),
     ("1.2.3.4", "(no port)"), ("1.2.3.4:0", "port from 1 to 65535"),
     ("1.2.3.4:70000", "port from 1 to 65535"), ("[::1:53", "missing ']'"),
     ("[nothost]:53", "IPv6 address inside [brackets]"), ("bad_host:1", "host name"),
     ("300.1.1.1:5", "IPv4"), (":53", "host name"), ("-a.example:1", "host name")],
)
def test_parse_endpoint_errors(text: str, fragment: str) -> None:
    with pytest.raises(ValueError, match="expected") as info:
        parse_endpoint(text)
    assert fragment in str(info.value)


# ------------------------------------------------------------------------- file and TOML


def test_toml_syntax_error_names_line(tmp_path: Path) -> None:
    file, errors = errors_of(tmp_path, 'interface = "wg0"\n\nport 6696\n')
    assert len(errors) == 1
    assert errors[0].startswith(f"{file}:3:")
    assert "invalid TOML" in errors[0]


def test_toml_error_at_end_of_file(tmp_path: Path) -> None:
    file, errors = errors_of(tmp_path, 'interface = "wg0"\nport =')
    assert errors[0].startswith(f"{file}:2: invalid TOML")


def test_toml_duplicate_key(tmp_path: Path) -> None:
    file, errors = errors_of(tmp_path, 'interface = "wg0"\nport = 1\nport = 2\n')
    assert errors[0].startswith(f"{file}:3:") and "invalid TOML" in errors[0]


def test_deeply_nested_toml() -> None:
    with pytest.raises(ConfigError, match="invalid TOML"):
        loads("a = " + "[" * 5000)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load(path)
    assert str(info.value) == f"{path}: cannot read: No such file or directory"


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "wg0.toml"
    path.write_bytes(b'interface = "wg0"\n# \xff\n')
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}:2: expected UTF-8 text"):
        load(path)


def test_too_large(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + "#" * (1 << 20))
    with pytest.raises(ConfigError, match="at most"):
        load(path)


def test_loads_names_given_path() -> None:
    with pytest.raises(ConfigError, match=r"^/etc/wgcast/wg0\.toml: interface: missing"):
        loads("", "/etc/wgcast/wg0.toml")


# ------------------------------------------------------------------------ error classes


def test_all_errors_reported_together(tmp_path: Path) -> None:
    text = f"""
interface = "wg0"
port = 0
backend = "uap"

[timers]
helo = "1s"

[[peers]]
public_key = "abc"

[[peers]]
public_key = "{K1}"
cost = -1
"""
    file, errors = errors_of(tmp_path, text)
    keys = [e.removeprefix(f"{file}: ").split(":")[0] for e in errors]
    assert keys == ["port", "backend", "timers.helo", "peers[0].public_key", "peers[1].cost"]


def test_public_key_message_exact(tmp_path: Path) -> None:
    text = BASE + '[[peers]]\n[[peers]]\n[[peers]]\npublic_key = "abc"\n'
    file, errors = errors_of(tmp_path, text)
    assert (
        f'{file}: peers[2].public_key: expected a WireGuard public key '
        '(44 base64 characters), got "abc"'
    ) in errors
    # and the two peers without a key
    assert f"{file}: peers[0].public_key: missing required key; expected a WireGuard public " \
           "key (44 base64 characters)" in errors


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        # unknown keys, with and without a suggestion
        (BASE + 'backned = "auto"\n', "backned",
         ['unknown key (did you mean "backend"?)']),
        (BASE + "zzz = 1\n", "zzz", ["unknown key", "expected one of: interface"]),
        (BASE + 'hello = "1s"\n', "hello", ["it belongs in [timers]"]),
        (BASE + '[[peers]]\npublic_key = "' + K1 + '"\nanycast = []\n', "peers[0].anycast",
         ["top-level keys must come before the first"]),
        (BASE + "[timers]\nhelo = 1\n", "timers.helo", ['did you mean "hello"?']),
        (BASE + "[link]\nbase_cst = 1\n", "link.base_cst", ['did you mean "base_cost"?']),
        (BASE + '[[peers]]\npublickey = "x"\n', "peers[0].publickey",
         ['did you mean "public_key"?']),
        (BASE + '[[groups]]\nprefx = "x"\n', "groups[0].prefx", ['did you mean "prefix"?']),
        (BASE + 'anycast=["fd00::/64"]\n[[groups]]\nprefix = "fd00::/64"\n'
         '[[groups.health]]\ntype = "tcp"\ntarget = "[::1]:1"\ntimout = "1s"\n',
         "groups[0].health[0].timout", ['did you mean "timeout"?']),
        # interface
        ("port = 1\n", "interface", ["missing required key", "Linux interface name"]),
        ('interface = "wg0/1"\n', "interface", ["expected a Linux interface name", '"wg0/1"']),
        ('interface = "a-very-long-name0"\n', "interface", ["1 to 15 characters"]),
        ('interface = "wg 0"\n', "interface", ["expected a Linux interface name"]),
        ("interface = 0\n", "interface", ["expected a Linux interface name", "got 0"]),
        # choices
        (BASE + 'backend = "kernel"\n', "backend",
         ['expected one of "auto", "uapi", "netlink"', 'got "kernel"']),
        (BASE + 'route_selection = "stiky"\n', "route_selection",
         ['expected one of "shortest", "sticky", "hysteresis"', 'did you mean "sticky"?']),
        # prefixes
        (BASE + 'addresses = ["fd00:1::1/64"]\n', "addresses[0]",
         ["without host bits", 'did you mean "fd00:1::/64"', '"fd00:1::1/128"']),
        (BASE + 'anycast = ["10.0.0.1/24"]\n', "anycast[0]",
         ["without host bits", 'did you mean "10.0.0.0/24"?']),
        (BASE + 'addresses = ["nonsense"]\n', "addresses[0]",
         ["expected an IP prefix", 'got "nonsense"']),
        (BASE + 'addresses = "fd00::1/128"\n', "addresses",
         ["expected an array of IP prefixes", 'got "fd00::1/128"']),
        (BASE + "addresses = [1]\n", "addresses[0]", ["expected an IP prefix", "got 1"]),
        (BASE + 'anycast = ["fe80::/64"]\n', "anycast[0]", ["outside fe80::/10"]),
        (BASE + 'anycast = ["ff02::1:6/128"]\n', "anycast[0]", ["unicast"]),
        (BASE + 'addresses = ["127.0.0.1/32"]\n', "addresses[0]", ["non-loopback"]),
        (BASE + 'anycast = ["fd00:a::53/128", "fd00:a::53/128"]\n', "anycast[1]",
         ['duplicate prefix "fd00:a::53/128"', "anycast[0]"]),
        (BASE + 'addresses = ["fd00:a::/64"]\nanycast = ["fd00:a::53/128"]\n', "addresses[0]",
         ["unicast prefix of this node", 'overlaps the anycast prefix "fd00:a::53/128"',
          "anycast[0]"]),
        # paths and the API socket
        (BASE + 'api_socket = "/run/' + "x" * 120 + '"\n', "api_socket",
         ["at most 107 bytes", "got 125 bytes"]),
        (BASE + 'api_socket = "wg0.sock"\n', "api_socket", ["absolute path", '"wg0.sock"']),
        (BASE + 'state_file = "state"\n', "state_file", ["absolute path"]),
        (BASE + "state_file = 1\n", "state_file", ["absolute path", "got 1"]),
        (BASE + "api_socket_mode = 660\n", "api_socket_mode",
         ['octal permission string such as "0660"', "got 660", "quote it"]),
        (BASE + 'api_socket_mode = "0999"\n', "api_socket_mode", ["octal", '"0999"']),
        (BASE + 'api_socket_group = "bad group"\n', "api_socket_group",
         ["group name or a numeric gid"]),
        (BASE + "api_socket_group = -1\n", "api_socket_group", ["group name or a numeric gid"]),
        # integers
        (BASE + "port = 0\n", "port", ["integer from 1 to 65535", "got 0"]),
        (BASE + "port = true\n", "port", ["integer from 1 to 65535", "got true"]),
        (BASE + 'port = "6696"\n', "port", ["integer from 1 to 65535", 'got "6696"']),
        (BASE + "port = 6696.0\n", "port", ["integer", "got 6696.0"]),
        (BASE + 'metrics = "::1:9586"\n', "metrics", ['did you mean "[::1]:9586"']),
        # timers
        (BASE + '[timers]\nprofile = "slow"\n', "timers.profile",
         ['expected one of "default", "fast"']),
        (BASE + "[timers]\nhello = 200\n", "timers.hello",
         ["duration string", "got 200", 'unit: "200s"']),
        (BASE + '[timers]\nhello = "0s"\n', "timers.hello", ["positive duration"]),
        (BASE + '[timers]\nhello = "5ms"\n', "timers.hello",
         ["duration from 10ms to 655.35s", 'got "5ms"']),
        (BASE + '[timers]\nhello = "15ms"\n', "timers.hello",
         ["multiple of 10ms", 'use "10ms" or "20ms"']),
        (BASE + '[timers]\nupdate = "20m"\n', "timers.update", ["10ms to 655.35s"]),
        (BASE + "[timers]\ndead = 1\n", "timers.dead", ["integer from 2 to 20", "got 1"]),
        (BASE + "[timers]\ndead = 21\n", "timers.dead", ["integer from 2 to 20"]),
        (BASE + '[timers]\nretract_grace = "2m"\n', "timers.retract_grace",
         ["duration from 1ms to 1m"]),
        (BASE + '[timers]\nhello = "2s"\n', "timers.hello",
         ["dead * hello (3 * 2s = 6s) to be shorter than update (4s)", "missing hellos"]),
        (BASE + '[timers]\nupdate = "500ms"\n', "timers.update",
         ["dead * hello", "shorter than update (500ms)"]),
        (BASE + 'timers = "fast"\n', "timers", ["expected a table", 'got "fast"']),
        # link
        (BASE + "[link]\nbase_cost = 0\n", "link.base_cost", ["integer from 1 to 4096"]),
        (BASE + "[link]\nrtt_cost_per_ms = -1\n", "link.rtt_cost_per_ms",
         ["integer from 0 to 1024"]),
        (BASE + "[link]\nmax_rtt_cost = 99999\n", "link.max_rtt_cost",
         ["integer from 0 to 32768"]),
        # peers
        (BASE + '[peers]\npublic_key = "' + K1 + '"\n', "peers",
         ["expected an array of tables", "write [[peers]]"]),
        (BASE + "peers = [1]\n", "peers[0]", ["expected a table", "got 1"]),
        (BASE + '[[peers]]\npublic_key = "' + K1[:-1] + '"\n', "peers[0].public_key",
         ["44 base64 characters"]),
        (BASE + '[[peers]]\npublic_key = "' + "a" * 64 + '"\n', "peers[0].public_key",
         ["44 base64 characters"]),
        (BASE + '[[peers]]\npublic_key = "' + K1[:-2] + 'l="\n', "peers[0].public_key",
         ["not canonical", f'did you mean "{K1}"?']),
        (BASE + f'[[peers]]\npublic_key = "{K1}"\n[[peers]]\npublic_key = "{K1}"\n',
         "peers[1].public_key", ["duplicate public key", "peers[0].public_key"]),
        (BASE + f'[[peers]]\npublic_key = "{K1}"\nname = "a"\n'
         f'[[peers]]\npublic_key = "{K2}"\nname = "a"\n',
         "peers[1].name", ['duplicate peer name "a"', "peers[0].name", "unique name"]),
        (BASE + f'[[peers]]\npublic_key = "{K1}"\nname = "{K2[:8]}"\n'
         f'[[peers]]\npublic_key = "{K2}"\n',
         "peers[1].name", ["duplicate peer name", "the default name"]),
        (BASE + f'[[peers]]\npublic_key = "{K1}"\nname = "a b"\n', "peers[0].name",
         ["without spaces"]),
        (BASE + f'[[peers]]\npublic_key = "{K1}"\nendpoints = ["2001:db8::2:51820"]\n',
         "peers[0].endpoints[0]", ["IPv6 addresses in brackets",
                                   'did you mean "[2001:db8::2]:51820"?']),
        (BASE + f'[[peers]]\npublic_key = "{K1}"\nendpoints = ["198.18.0.2"]\n',
         "peers[0].endpoints[0]", ["expected host:port", "(no port)"]),
        (BASE + f'[[peers]]\npublic_key = "{K1}"\nendpoints = ["a:1", "A:1"]\n',
         "peers[0].endpoints[1]", ['duplicate endpoint "a:1"', "peers[0].endpoints[0]"]),
        (BASE + f'[[peers]]\npublic_key = "{K1}"\nendpoints = '
         + str([f"10.0.0.{i}:1" for i in range(17)]) + "\n",
         "peers[0].endpoints", ["at most 16 endpoints", "got 17"]),
        (BASE + f'[[peers]]\npublic_key = "{K1}"\nmay_originate = ["x"]\n',
         "peers[0].may_originate[0]", ["expected an IP prefix"]),
        (BASE + f'[[peers]]\npublic_key = "{K1}"\ncost = 5000\n', "peers[0].cost",
         ["integer from 0 to 4096", "got 5000"]),
        # groups
        (BASE + "[[groups]]\nstatic = true\n", "groups[0].prefix",
         ["missing required key", "anycast prefix"]),
        (BASE + '[[groups]]\nprefix = "fd00:a::53/128"\n', "groups[0].prefix",
         ["covered by `anycast`", 'add "fd00:a::53/128" to anycast']),
        (BASE + 'anycast = ["10.0.0.0/8"]\n[[groups]]\nprefix = "fd00:a::53/128"\n',
         "groups[0].prefix", ["covered by `anycast`"]),
        (BASE + 'anycast = ["fd00:a::/64"]\n[[groups]]\nprefix = "fd00:a::/64"\n'
         '[[groups]]\nprefix = "fd00:a::/64"\n', "groups[1].prefix",
         ['duplicate group prefix "fd00:a::/64"', "groups[0].prefix"]),
        (BASE + 'anycast = ["fd00::/64"]\n[[groups]]\nprefix = "fd00::/64"\nstatic = 1\n',
         "groups[0].static", ["expected true or false", "got 1"]),
        (BASE + 'anycast = ["fd00::/64"]\n[[groups]]\nprefix = "fd00::/64"\nmetric = -1\n',
         "groups[0].metric", ["integer from 0 to 16384"]),
        (BASE + 'anycast = ["fd00::/64"]\n[[groups]]\nprefix = "fd00::/64"\n'
         'address_interface = "a/b"\n', "groups[0].address_interface",
         ["Linux interface name"]),
        (BASE + 'anycast = ["fd00::/64"]\n[[groups]]\nprefix = "fd00::/64"\n'
         'allow_uids = ["bob"]\n', "groups[0].allow_uids[0]", ["numeric uid", 'got "bob"']),
        (BASE + 'anycast = ["fd00::/64"]\n[[groups]]\nprefix = "fd00::/64"\n'
         "allow_gids = 5\n", "groups[0].allow_gids", ["array of numeric gids", "got 5"]),
        (BASE + 'anycast = ["fd00::/64"]\n[groups]\nprefix = "fd00::/64"\n', "groups",
         ["array of tables", "write [[groups]]"]),
    ],
)
def test_error(tmp_path: Path, text: str, key: str, expected: list[str]) -> None:
    assert_error(tmp_path, text, key, *expected)


GROUP = BASE + 'anycast = ["fd00:a::53/128"]\n[[groups]]\nprefix = "fd00:a::53/128"\n' \
    "[[groups.health]]\n"


@pytest.mark.parametrize(
    ("health", "key", "expected"),
    [
        ('target = "[::1]:53"\n', "type", ["missing required key", '"exec", "tcp"']),
        ('type = "htp"\n', "type", ['did you mean "http"?']),
        ('type = "exec"\n', "command", ["missing required key", '["/bin/true"]']),
        ('type = "exec"\ncommand = "/bin/true"\n', "command",
         ["array of strings", 'got "/bin/true"']),
        ('type = "exec"\ncommand = []\n', "command", ["array of strings", "empty array"]),
        ('type = "exec"\ncommand = ["/bin/true"]\ntarget = "[::1]:53"\n', "target",
         ['unexpected key for type = "exec"', '"tcp" or "udp" or "http" or "dns"']),
        ('type = "tcp"\n', "target", ["missing required key", "host:port"]),
        ('type = "tcp"\ntarget = "::1"\n', "target", ["brackets", '"[::1]:PORT"']),
        ('type = "dns"\ntarget = "::1"\nquery = "a"\n', "target",
         ["brackets", 'did you mean "[::1]"?']),
        ('type = "tcp"\ntarget = "[::1]:53"\nstatus = 200\n', "status",
         ['unexpected key for type = "tcp"', '"http"']),
        ('type = "udp"\ntarget = "[::1]:53"\n', "send", ["missing required key"]),
        ('type = "udp"\ntarget = "[::1]:53"\nsend = 1\n', "send", ["expected a string"]),
        ('type = "udp"\ntarget = "[::1]:53"\nsend = "x"\nexpect = 2\n', "expect",
         ["expected a string"]),
        ('type = "http"\ntarget = "[::1]:80"\n', "target", ["http:// or https:// URL"]),
        ('type = "http"\ntarget = "ftp://x/"\n', "target", ["http:// or https:// URL"]),
        ('type = "http"\ntarget = "http://x:99999/"\n', "target", ["URL"]),
        ('type = "http"\ntarget = "http://x/"\nstatus = 99\n', "status",
         ["integer from 100 to 599"]),
        ('type = "dns"\ntarget = "[::1]:53"\n', "query", ["missing required key"]),
        ('type = "dns"\ntarget = "[::1]:53"\nquery = "a..b"\n', "query",
         ["domain name", '"a..b"']),
        ('type = "dns"\ntarget = "[::1]:53"\nquery = "a.b"\nqtype = "XYZ"\n', "qtype",
         ["DNS record type", '"XYZ"']),
        ('type = "tcp"\ntarget = "[::1]:53"\ninterval = 1\n', "interval",
         ["duration string", 'unit: "1s"']),
        ('type = "tcp"\ntarget = "[::1]:53"\ninterval = "1s"\ntimeout = "2s"\n', "timeout",
         ["no longer than interval (1s)", "got 2s"]),
        ('type = "tcp"\ntarget = "[::1]:53"\nrise = 0\n', "rise", ["integer from 1 to 100"]),
        ('type = "tcp"\ntarget = "[::1]:53"\nfall = 101\n', "fall", ["integer from 1 to 100"]),
    ],
)
def test_health_error(tmp_path: Path, health: str, key: str, expected: list[str]) -> None:
    assert_error(tmp_path, GROUP + health, f"groups[0].health[0].{key}", *expected)


def test_bad_interval_does_not_cascade(tmp_path: Path) -> None:
    errors = assert_error(
        tmp_path, GROUP + 'type = "tcp"\ntarget = "[::1]:53"\ninterval = "x"\ntimeout = "2s"\n',
        "groups[0].health[0].interval", "expected a duration",
    )
    assert len(errors) == 1


def test_bad_hello_does_not_cascade(tmp_path: Path) -> None:
    errors = assert_error(tmp_path, BASE + '[timers]\nhello = "3s7"\n', "timers.hello",
                          "expected a duration")
    assert len(errors) == 1


def test_quoted_key_path(tmp_path: Path) -> None:
    assert_error(tmp_path, BASE + '"odd key" = 1\n', '"odd key"', "unknown key")


# -------------------------------------------------------------------------- `wgcast check`


def test_check_ok(tmp_path: Path) -> None:
    path = write(tmp_path, FULL)
    result = CliRunner().invoke(check, ["-c", str(path)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"{path}: ok (")
    assert "2 peers" in result.output and "3 groups" in result.output


def test_check_errors(tmp_path: Path) -> None:
    good = write(tmp_path, BASE, "good.toml")
    bad = write(tmp_path, BASE + "port = 0\nzz = 1\n", "bad.toml")
    result = CliRunner().invoke(check, ["-c", str(good), "--config", str(bad)])
    assert result.exit_code == 2
    assert result.stdout == f"{good}: ok (interface wg0, 0 peers, 0 groups, 0 anycast " \
        "prefixes, 0 addresses, timers default: hello 200ms, dead 3, update 4s)\n"
    lines = result.stderr.splitlines()
    assert len(lines) == 2
    assert all(line.startswith(f"{bad}: ") for line in lines)


def test_check_requires_config() -> None:
    result = CliRunner().invoke(check, [])
    assert result.exit_code == 2
    assert "--config" in result.output


# ------------------------------------------------------------------------------- fuzzing


_FRAGMENTS = [
    'interface = "wg0"', "[timers]", "[link]", "[[peers]]", "[[groups]]", "[[groups.health]]",
    f'public_key = "{K1}"', 'prefix = "fd00:a::53/128"', 'anycast = ["fd00:a::53/128"]',
    'type = "dns"', 'type = "exec"', 'target = "[::1]:53"', 'hello = "2s"', "dead = 2",
    'endpoints = ["[::1]:1", "x:2"]', "port = 99999", "a = [[1], {b = 2}]", '"' * 3,
    "x = 1979-05-27T07:32:00Z", "groups = 1", "peers = [{}]", "[peers]", "= 1", "[a.b.c]",
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(
    st.text(max_size=400),
    st.lists(st.one_of(st.sampled_from(_FRAGMENTS), st.text(max_size=12)), max_size=16)
    .map("\n".join),
))
def test_arbitrary_text_raises_only_config_error(text: str) -> None:
    try:
        config = loads(text, "fuzz.toml")
    except ConfigError as e:
        assert e.errors
        assert all(m.startswith("fuzz.toml") for m in e.errors)
    else:
        assert isinstance(config, Config)


_KEYS = [
    "interface", "backend", "addresses", "anycast", "api_socket", "api_socket_mode",
    "api_socket_group", "state_file", "port", "metrics", "route_selection", "timers", "link",
    "peers", "groups", "profile", "hello", "dead", "update", "retract_grace", "base_cost",
    "rtt_cost_per_ms", "max_rtt_cost", "name", "public_key", "endpoints", "may_originate",
    "cost", "prefix", "static", "metric", "address_interface", "allow_uids", "allow_gids",
    "health", "type", "interval", "timeout", "rise", "fall", "command", "target", "send",
    "expect", "status", "query", "qtype", "x",
]
_SCALARS = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(
        ["wg0", "fd00:a::53/128", "10.0.0.0/8", "200ms", "4s", K1, "[::1]:53", "exec",
         "dns", "http", "tcp", "udp", "http://[::1]:80/", "fast", "0660", "a.b", "1.2.3.4:5"]
    ),
)


def _documents() -> st.SearchStrategy[Any]:
    values = st.recursive(
        _SCALARS,
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.dictionaries(st.sampled_from(_KEYS), children, max_size=6),
        ),
        max_leaves=30,
    )
    return st.dictionaries(st.sampled_from(_KEYS), values, max_size=10)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_documents())
def test_arbitrary_documents_raise_only_config_error(doc: dict[str, Any]) -> None:
    try:
        config = from_mapping(doc)
    except ConfigError as e:
        assert e.errors
        assert all(m.startswith("<dict>: ") for m in e.errors)
    else:
        assert isinstance(config, Config)


@pytest.mark.parametrize("key", ["restart_hold", "move_hold"])
def test_holds_can_be_turned_off_with_zero(key: str) -> None:
    """docs/config.md: `0` turns these off; the daemon checks `> 0` (tests/unit/
    test_runtime.py shows move_hold = "0s" moving at once)."""
    c = loads(BASE + f'[timers]\n{key} = "0s"\n')
    assert getattr(c.timers, key) == 0.0
    with pytest.raises(ConfigError, match="positive"):
        loads(BASE + f'[timers]\n{key} = "-1s"\n')


def test_peer_babel_generic_and_address() -> None:
    key = "A" * 43 + "="
    c = loads(BASE + f'[[peers]]\npublic_key = "{key}"\nbabel = "generic"\n'
              'babel_address = "fe80::2"\n', "g.toml")
    assert c.peers[0].babel == "generic"
    assert c.peers[0].babel_address == ipaddress.IPv6Address("fe80::2")
    assert loads(BASE + f'[[peers]]\npublic_key = "{key}"\n', "w.toml").peers[0].babel == "wgcast"
    for bad in ('babel = "babeld"', 'babel_address = "fd00::1"'):
        with pytest.raises(ConfigError):
            loads(BASE + f'[[peers]]\npublic_key = "{key}"\n{bad}\n', "b.toml")


# ------------------------------------------------ one group entry, several prefixes

DUAL = BASE + '''anycast = ["192.0.2.53/32", "fd00:a::53/128"]
[[groups]]
prefix = ["192.0.2.53/32", "fd00:a::53/128"]
metric = 7
allow_uids = [1000]
[[groups.health]]
type = "tcp"
target = "[::1]:53"
'''


def test_a_dual_stack_group_writes_its_check_once() -> None:
    """One entry, two prefixes: two groups with the same settings and the same check."""
    c = loads(DUAL)
    v4, v6 = c.groups
    assert v4.prefix == ipaddress.ip_network("192.0.2.53/32")
    assert v6.prefix == ipaddress.ip_network("fd00:a::53/128")
    assert v4.health == v6.health == (
        HealthConf("tcp", target="[::1]:53", endpoint=Endpoint("::1", 53)),)
    assert (v4.metric, v4.allow_uids) == (v6.metric, v6.allow_uids) == (7, (1000,))
    assert c.group("192.0.2.53/32") is v4 and c.group("fd00:a::53/128") is v6


def test_a_one_prefix_array_is_the_string_form() -> None:
    one = BASE + 'anycast = ["fd00:a::53/128"]\n[[groups]]\nprefix = '
    assert loads(one + '["fd00:a::53/128"]\n') == loads(one + '"fd00:a::53/128"\n')


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        (BASE + 'anycast = ["fd00::/64"]\n[[groups]]\nprefix = ["fd00::/64", "fd00::1/64"]\n',
         "groups[0].prefix[1]", ["without host bits"]),
        (BASE + 'anycast = ["fd00::/64"]\n[[groups]]\nprefix = []\n',
         "groups[0].prefix", ["at least one anycast prefix"]),
        (BASE + 'anycast = ["fd00::/64"]\n[[groups]]\nprefix = ["fd00::/64", "fd00::/64"]\n',
         "groups[0].prefix[1]", ['duplicate group prefix "fd00::/64"', "groups[0].prefix[0]"]),
        (BASE + 'anycast = ["fd00::/64"]\n[[groups]]\nprefix = "fd00::/64"\n'
         '[[groups]]\nprefix = ["10.0.0.1/32", "fd00::/64"]\n',
         "groups[1].prefix[1]", ['duplicate group prefix "fd00::/64"', "groups[0].prefix"]),
        (BASE + 'anycast = ["fd00::/64"]\n[[groups]]\nprefix = ["fd00::/64", "10.0.0.1/32"]\n',
         "groups[0].prefix[1]", ["covered by `anycast`", '"10.0.0.1/32"']),
        (BASE + 'anycast = ["fd00::/64"]\n[[groups]]\nprefix = ["fd00::/64", 5]\n',
         "groups[0].prefix[1]", ["expected an IP prefix", "got 5"]),
    ],
)
def test_group_prefix_array_errors(tmp_path: Path, text: str, key: str,
                                   expected: list[str]) -> None:
    assert_error(tmp_path, text, key, *expected)


def test_check_counts_the_groups_an_entry_expands_to(tmp_path: Path) -> None:
    """`wgcast check` counts the groups an entry expands to."""
    path = write(tmp_path, DUAL)
    result = CliRunner().invoke(check, ["-c", str(path)])
    assert result.exit_code == 0, result.output
    assert "2 groups" in result.output


# ------------------------------------------------------- named checks shared by groups

NAMED = BASE + '''anycast = ["fd00:a::/64"]

[[health_checks]]
name = "backend"
type = "tcp"
target = "[::1]:5432"

[[health_checks]]
name = "disk"
type = "exec"
command = ["/usr/local/bin/disk-ok"]

[[groups]]
prefix = "fd00:a::53/128"
health_checks = ["backend"]
[[groups.health]]
type = "dns"
target = "[::1]:53"
query = "example.org"

[[groups]]
prefix = "fd00:a::80/128"
health_checks = ["backend", "disk"]
'''


def test_named_checks_are_shared_by_groups() -> None:
    c = loads(NAMED)
    dns, web = c.groups
    backend = HealthConf("tcp", target="[::1]:5432", endpoint=Endpoint("::1", 5432))
    disk = HealthConf("exec", command=("/usr/local/bin/disk-ok",))
    assert [h.type for h in dns.health] == ["dns", "tcp"] and dns.health[1] == backend
    assert web.health == (backend, disk)


def test_a_named_check_referenced_twice_runs_once_per_group() -> None:
    c = loads(NAMED.replace('["backend", "disk"]', '["backend", "backend"]'))
    assert len(c.groups[1].health) == 1


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        (NAMED.replace('["backend", "disk"]', '["backnd"]'), "groups[1].health_checks[0]",
         ['unknown health check "backnd"', 'did you mean "backend"?']),
        (NAMED.replace('["backend", "disk"]', '["web"]'), "groups[1].health_checks[0]",
         ['unknown health check "web"', '"backend", "disk"']),
        (BASE + 'anycast = ["fd00:a::/64"]\n[[groups]]\nprefix = "fd00:a::53/128"\n'
         'health_checks = ["x"]\n', "groups[0].health_checks[0]",
         ["defined: none", "[[health_checks]]"]),
        (NAMED.replace('name = "disk"', 'name = "backend"'), "health_checks[1].name",
         ['duplicate health check name "backend"', "health_checks[0].name"]),
        (NAMED.replace('name = "disk"\n', ''), "health_checks[1].name",
         ["missing required key"]),
        (NAMED.replace('target = "[::1]:5432"', 'target = "[::1]"'), "health_checks[0].target",
         ["host:port"]),
        (NAMED.replace('type = "tcp"', 'type = "tcp"\nsend = "x"'), "health_checks[0].send",
         ['unexpected key for type = "tcp"']),
        (NAMED.replace('health_checks = ["backend"]', 'health_checks = "backend"'),
         "groups[0].health_checks", ["expected an array of health check names"]),
    ],
)
def test_named_check_errors(tmp_path: Path, text: str, key: str, expected: list[str]) -> None:
    assert_error(tmp_path, text, key, *expected)


def test_a_named_check_with_errors_is_reported_once(tmp_path: Path) -> None:
    """Its groups do not repeat its error as an unknown name."""
    _, errors = errors_of(tmp_path, NAMED.replace('target = "[::1]:5432"', 'target = 5'))
    assert len(errors) == 1 and "health_checks[0].target" in errors[0], errors


def test_lan_sections() -> None:
    """[[lan]]: a plain LAN interface beside the WireGuard one; its own keys, a clear
    error for the WireGuard interface itself, a duplicate and a misspelt key."""
    c = loads(BASE + '[[lan]]\ninterface = "eth1"\nmay_originate = ["fd00:b::/48", '
              '"10.0.2.0/24"]\ncost = 32\nipv4_next_hop = "10.1.0.1"\n', "l.toml")
    (lan,) = c.lan
    assert lan.interface == "eth1" and lan.cost == 32
    assert lan.may_originate == (ipaddress.ip_network("fd00:b::/48"),
                                 ipaddress.ip_network("10.0.2.0/24"))
    assert lan.ipv4_next_hop == ipaddress.IPv4Address("10.1.0.1")
    assert loads(BASE, "w.toml").lan == ()
    for bad, want in (('[[lan]]\ninterface = "wg0"\n', "other than the WireGuard interface"),
                      ('[[lan]]\ninterface = "eth1"\n[[lan]]\ninterface = "eth1"\n',
                       'duplicate LAN interface "eth1" (already at lan[0].interface)'),
                      ('[[lan]]\ninterfce = "eth1"\n', 'did you mean "interface"?'),
                      ('[[lan]]\ninterface = "eth1"\ncost = -1\n', "lan[0].cost"),
                      ("[lan]\ninterface = \"eth1\"\n", "write [[lan]] for each entry")):
        with pytest.raises(ConfigError, match=re.escape(want)):
            loads(BASE + bad, "b.toml")


def test_lan_only_node() -> None:
    """Without `interface`, [[lan]] sections alone make a LAN-only node: its socket and
    state file are named after its first LAN; what needs WireGuard is refused clearly."""
    c = loads('[[lan]]\ninterface = "eth1"\n[[lan]]\ninterface = "eth2"\n', "l.toml")
    assert c.interface == "" and c.label == "eth1"
    assert [lan.interface for lan in c.lan] == ["eth1", "eth2"]
    assert c.api_socket == "/run/wgcast/eth1.sock"
    assert c.state_file == "/var/lib/wgcast/eth1.state"
    ok = loads('addresses = ["fd00:1::1/128"]\nanycast = ["fd00:aa::/48"]\n'
               '[[groups]]\nprefix = "fd00:aa::1/128"\n[[lan]]\ninterface = "eth1"\n')
    assert ok.interface == "" and ok.groups and ok.addresses
    for bad, want in (
            ("", 'missing required key; expected a Linux interface name such as "wg0" (or, '
                 "for a node without WireGuard, only [[lan]] sections)"),
            ('[[peers]]\npublic_key = "' + "A" * 43 + '="\n[[lan]]\ninterface = "eth1"\n',
             "peers: expected no [[peers]] on a LAN-only node (no `interface`): peers are "
             'WireGuard peers; add interface = "wg0" or remove it'),
            ('roster = "/nonexistent"\nmesh_key = "' + "A" * 43 + '="\n[[lan]]\n'
             'interface = "eth1"\n', "roster: expected no roster on a LAN-only node")):
        with pytest.raises(ConfigError, match=re.escape(want)):
            loads(bad, "b.toml")
