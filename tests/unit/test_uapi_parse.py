"""UAPI codec against replies recorded from a real wireguard-go (data/record_uapi.py)."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import ipaddress
import pathlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wgcast.dataplane.types import (
    AddAllowedIP,
    DeviceIOError,
    DeviceNotFound,
    InvalidValue,
    MalformedReply,
    MalformedRequest,
    Op,
    PeerUpdate,
    PortInUse,
    RemoveAllowedIP,
    ReplaceAllowedIPs,
    UnknownWireGuardError,
    error_for,
    updates_from_ops,
)
from wgcast.dataplane.uapi import (
    UapiDevice,
    check_reply,
    format_set,
    parse_get,
    parse_prefix,
    prefix_text,
)
from wgcast.keys import public_from_private

DATA = pathlib.Path(__file__).parent / "data"
N = ipaddress.ip_network


def recorded(name: str) -> bytes:
    return (DATA / name).read_bytes()


def key(seed: str) -> bytes:
    """The recording's fixed private keys (clamped, as wireguard-go reports them)."""
    k = bytearray(hashlib.sha256(seed.encode()).digest())
    k[0] &= 248
    k[31] = (k[31] & 127) | 64
    return bytes(k)


PRIV_A, PRIV_B = key("wgcast test A"), key("wgcast test B")
PUB_B = public_from_private(PRIV_B)
PUB_C, PUB_D = (public_from_private(key(f"wgcast test {x}")) for x in "CD")


def test_empty_device() -> None:
    dev = parse_get(check_reply(recorded("uapi_get_empty.txt"), "get"))
    assert dev.private_key is None and dev.public_key is None
    assert dev.fwmark == 0 and dev.peers == []
    assert dev.listen_port > 0  # wireguard-go binds a random port at start


def test_device_with_peers_after_handshake() -> None:
    dev = parse_get(check_reply(recorded("uapi_get_peers.txt"), "get"))
    assert dev.private_key == PRIV_A
    assert dev.public_key == public_from_private(PRIV_A)
    assert dev.listen_port == 51801 and dev.fwmark == 66
    assert {p.public_key for p in dev.peers} == {PUB_B, PUB_C, PUB_D}

    b = dev.peer(PUB_B)
    assert b is not None
    assert b.endpoint == "127.0.0.1:51802"
    assert b.allowed_ips == [N("10.20.0.0/16"), N("fd20::/64"), N("10.20.30.40/32")]
    assert b.persistent_keepalive == 1
    assert b.last_handshake is not None and b.last_handshake > 1.6e9
    assert b.tx_bytes > 0 and b.rx_bytes > 0

    c = dev.peer(PUB_C)
    assert c is not None and c.endpoint == "[2001:db8::c]:51820"
    assert c.last_handshake is None and c.rx_bytes == 0 and c.allowed_ips == [N("10.30.0.0/24")]

    d = dev.peer(PUB_D)
    assert d is not None and d.endpoint is None
    assert d.allowed_ips == [N("0.0.0.0/0"), N("::/0")]
    assert dev.allowed_ips_by_peer()[PUB_D] == {N("0.0.0.0/0"), N("::/0")}


def test_many_allowed_ips() -> None:
    dev = parse_get(check_reply(recorded("uapi_get_many.txt"), "get"))
    c = dev.peer(PUB_C)
    assert c is not None and len(c.allowed_ips) == 300
    assert set(c.allowed_ips) == {N(f"10.{i // 256}.{i % 256}.0/24") for i in range(300)}
    assert dev.private_key == PRIV_B


@pytest.mark.parametrize(
    ("name", "cls", "code"),
    [
        ("uapi_set_einval.txt", InvalidValue, errno.EINVAL),
        ("uapi_set_eproto.txt", MalformedRequest, errno.EPROTO),
    ],
)
def test_recorded_errors(name: str, cls: type[Exception], code: int) -> None:
    with pytest.raises(cls) as e:
        check_reply(recorded(name), "apply")
    assert e.value.errno == code  # type: ignore[attr-defined]
    assert "apply failed" in str(e.value) and str(code) in str(e.value)


def test_removal_probe_reply_of_this_wireguard_go() -> None:
    """Recorded from wireguard-go v0.0.20220316: `allowed_ip=-P` is EINVAL there."""
    version = recorded("wireguard-go-version.txt").decode()
    reply = recorded("uapi_remove_probe.txt")
    if "v0.0.2022" in version:
        with pytest.raises(InvalidValue):
            check_reply(reply, "probe")
    else:
        check_reply(reply, "probe")


def test_errno_mapping() -> None:
    assert isinstance(error_for(-98, "configure"), PortInUse)
    assert isinstance(error_for(errno.ENODEV, "get"), DeviceNotFound)
    assert isinstance(error_for(-55, "set"), UnknownWireGuardError)  # wireguard-go "unknown"
    e = error_for(-22, "set_endpoint", "detail")
    assert e.errno == 22 and "set_endpoint" in str(e) and "EINVAL" in str(e)


@pytest.mark.parametrize(
    "raw",
    [b"", b"errno=0\n", b"private_key=zz\nerrno=x\n\n", b"listen_port=1\n\n"],
)
def test_bad_replies(raw: bytes) -> None:
    with pytest.raises((MalformedReply, Exception)):
        check_reply(raw, "get")


def test_parse_rejects_garbage_and_skips_unknown_keys() -> None:
    with pytest.raises(MalformedReply):
        parse_get("private_key=abcd\n")
    with pytest.raises(MalformedReply):
        parse_get(f"public_key={PUB_B.hex()}\nallowed_ip=10.0.0.0/99\n")
    with pytest.raises(MalformedReply):
        parse_get("no equals\n")
    dev = parse_get(f"future_key=1\npublic_key={PUB_B.hex()}\nfancy=2\nallowed_ip=10.0.0.1/8\n")
    assert dev.peers[0].allowed_ips == [N("10.0.0.0/8")]


def test_format_set_orders_lines_per_peer() -> None:
    text = format_set(
        [
            PeerUpdate(
                PUB_B,
                update_only=True,
                replace_allowed_ips=True,
                endpoint="[::1]:5",
                persistent_keepalive=7,
                allowed_ips=[(N("10.0.0.0/8"), False)],
            ),
            PeerUpdate(PUB_C, remove=True, allowed_ips=[(N("10.1.0.0/16"), False)]),
            PeerUpdate(PUB_D, update_only=True, allowed_ips=[(N("fd00::/8"), True)]),
        ],
        private_key=PRIV_A,
        listen_port=51820,
        fwmark=3,
    )
    assert text == (
        "set=1\n"
        f"private_key={PRIV_A.hex()}\nlisten_port=51820\nfwmark=3\n"
        f"public_key={PUB_B.hex()}\nupdate_only=true\nreplace_allowed_ips=true\n"
        "endpoint=[::1]:5\npersistent_keepalive_interval=7\nallowed_ip=10.0.0.0/8\n"
        f"public_key={PUB_C.hex()}\nremove=true\n"
        f"public_key={PUB_D.hex()}\nupdate_only=true\nallowed_ip=-fd00::/8\n"
        "\n"
    )
    with pytest.raises(ValueError):
        format_set([], listen_port=70000)
    with pytest.raises(ValueError):
        format_set([PeerUpdate(b"short")])


def test_ops_become_peer_sections() -> None:
    a, b = PUB_B, PUB_C
    ops: list[Op] = [
        AddAllowedIP(a, N("10.0.0.0/24")),
        AddAllowedIP(a, N("10.0.1.0/24")),
        AddAllowedIP(b, N("10.0.2.0/24")),
        RemoveAllowedIP(b, N("10.0.3.0/24")),
        ReplaceAllowedIPs(b, (N("10.0.4.0/24"),)),
        RemoveAllowedIP(a, N("10.0.5.0/24")),
    ]
    ups = updates_from_ops(ops)
    assert [(u.public_key, u.replace_allowed_ips, u.allowed_ips) for u in ups] == [
        (a, False, [(N("10.0.0.0/24"), False), (N("10.0.1.0/24"), False)]),
        (b, False, [(N("10.0.2.0/24"), False), (N("10.0.3.0/24"), True)]),
        (b, True, [(N("10.0.4.0/24"), False)]),
        (a, False, [(N("10.0.5.0/24"), True)]),
    ]
    assert all(u.update_only for u in ups)
    text = format_set(ups)
    assert text.count("public_key=") == 4 and "allowed_ip=-10.0.3.0/24\n" in text


@settings(max_examples=300)
@given(
    st.one_of(
        st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 32)).map(
            lambda t: ipaddress.IPv4Network(t, strict=False)
        ),
        st.tuples(st.integers(0, 2**128 - 1), st.integers(0, 128)).map(
            lambda t: ipaddress.IPv6Network(t, strict=False)
        ),
    )
)
def test_prefix_text_round_trip(p: ipaddress.IPv4Network | ipaddress.IPv6Network) -> None:
    assert parse_prefix(prefix_text(p)) == p
    assert parse_prefix(str(p)) == p


@pytest.mark.parametrize("bad", ["10.0.0.0", "10.0.0.0/33", "nope/8", "fd00::/129", "1.2.3/8"])
def test_parse_prefix_rejects(bad: str) -> None:
    with pytest.raises(MalformedReply):
        parse_prefix(bad)


async def _serve(path: str, reply: bytes | None, seen: list[bytes]) -> asyncio.AbstractServer:
    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        seen.append(await r.readuntil(b"\n\n"))
        if reply is None:
            await asyncio.sleep(10)
        w.write(reply or b"")
        await w.drain()
        w.close()

    return await asyncio.start_unix_server(handle, path)


def test_transport_one_request_per_connection(tmp_path: pathlib.Path) -> None:
    async def go() -> None:
        seen: list[bytes] = []
        server = await _serve(str(tmp_path / "wgx.sock"), recorded("uapi_get_peers.txt"), seen)
        async with server:
            dev = UapiDevice("wgx", socket_dir=str(tmp_path))
            got = await dev.get()
            assert got.private_key == PRIV_A and len(got.peers) == 3
            await dev.get()
        assert seen == [b"get=1\n\n", b"get=1\n\n"]

    asyncio.run(go())


def test_transport_timeout_and_missing_socket(tmp_path: pathlib.Path) -> None:
    async def go() -> None:
        server = await _serve(str(tmp_path / "wgy.sock"), None, [])
        async with server:
            dev = UapiDevice("wgy", socket_dir=str(tmp_path), timeout=0.2)
            with pytest.raises(DeviceIOError) as e:
                await dev.get()
            assert e.value.errno == errno.ETIMEDOUT and "get" in str(e.value)
        with pytest.raises(DeviceNotFound):
            await UapiDevice("wgz", socket_dir=str(tmp_path)).get()

    asyncio.run(go())
