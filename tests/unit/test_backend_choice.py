"""Back-end choice (dataplane/backend.py) and the netlink handshake restart's messages."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from wgcast.dataplane.backend import BackendMismatch, choose, open_device
from wgcast.dataplane.netlink import (
    WGPEER_F_REMOVE_ME,
    WgMsg,
    build_set_messages,
    restart_messages,
    sockaddr_to_endpoint,
)
from wgcast.dataplane.types import DeviceNotFound, Peer
from wgcast.keys import generate_private, public_from_private

SOCK = "/var/run/wireguard/wg0.sock"
N = ipaddress.ip_network


@pytest.mark.parametrize(("backend", "kind", "has_socket", "want"), [
    ("auto", "wireguard", False, "netlink"),
    ("auto", "tun", True, "uapi"),
    ("auto", None, True, "uapi"),  # a UAPI socket without a link here (another netns)
    ("uapi", "tun", True, "uapi"),
    ("uapi", None, False, "uapi"),  # UapiDevice itself reports the missing socket
    ("netlink", "wireguard", False, "netlink"),
])
def test_choice(backend: str, kind: str | None, has_socket: bool, want: str) -> None:
    assert choose("wg0", backend, kind, SOCK, has_socket) == want


def test_forcing_the_other_kind_names_the_interface() -> None:
    with pytest.raises(BackendMismatch, match=r'wg0: backend = "uapi" but wg0 is a kernel '
                                              r"WireGuard link .*backend = \"netlink\""):
        choose("wg0", "uapi", "wireguard", SOCK, False)
    with pytest.raises(BackendMismatch, match=r'wg0: backend = "netlink" but wg0 is a tun '
                                              r"link, not kernel WireGuard \(it has a UAPI "):
        choose("wg0", "netlink", "tun", SOCK, True)
    with pytest.raises(DeviceNotFound, match=r"wg0: no such interface .*type wireguard"):
        choose("wg0", "netlink", None, SOCK, False)
    with pytest.raises(DeviceNotFound, match=r"wg0: no such interface and no UAPI socket"):
        choose("wg0", "auto", None, SOCK, False)
    with pytest.raises(BackendMismatch, match=r"eth1: a veth link, not a WireGuard interface "
                                              r".*a \[\[lan\]\] section"):
        choose("eth1", "auto", "veth", SOCK, False)
    with pytest.raises(ValueError, match="backend must be one of"):
        choose("wg0", "kernel", "wireguard", SOCK, False)


def test_open_device_on_a_missing_interface_is_a_clear_error(tmp_path: object) -> None:
    with pytest.raises(DeviceNotFound, match="wgcastnone0: no such interface"):
        open_device("wgcastnone0", "auto", socket_dir=str(tmp_path))


def _peers_of(msg: WgMsg) -> list[Any]:
    msg.encode()
    back = WgMsg(bytes(msg.data))
    back.decode()
    return list(back.get_attr("WGDEVICE_A_PEERS") or [])


def test_restart_messages_remove_then_recreate_with_every_setting() -> None:
    key = public_from_private(generate_private())
    psk = generate_private()
    ips = [N("10.0.0.0/24"), N("fd00::/64")]
    peer = Peer(key, endpoint="[2001:db8::1]:51820", allowed_ips=ips, persistent_keepalive=25)
    (msg,) = restart_messages("wg0", peer, psk)
    gone, again = _peers_of(msg)
    assert bytes(gone.get_attr("WGPEER_A_PUBLIC_KEY")) == key
    assert gone.get_attr("WGPEER_A_FLAGS") == WGPEER_F_REMOVE_ME
    assert bytes(again.get_attr("WGPEER_A_PUBLIC_KEY")) == key
    assert again.get_attr("WGPEER_A_FLAGS") == 0  # created, not update-only
    assert bytes(again.get_attr("WGPEER_A_PRESHARED_KEY")) == psk
    assert sockaddr_to_endpoint(bytes(again.get_attr("WGPEER_A_ENDPOINT"))) == peer.endpoint
    assert again.get_attr("WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL") == 25
    assert len(again.get_attr("WGPEER_A_ALLOWEDIPS")) == 2


def test_restart_messages_split_a_long_list_and_keep_the_key_in_the_first_part() -> None:
    key = public_from_private(generate_private())
    psk = generate_private()
    ips = [N(f"10.{i // 256}.{i % 256}.0/24") for i in range(2000)]
    msgs = restart_messages("wg0", Peer(key, allowed_ips=ips), psk, max_bytes=8 * 1024)
    assert len(msgs) > 2
    entries = [e for m in msgs for e in _peers_of(m)]
    assert entries[0].get_attr("WGPEER_A_FLAGS") == WGPEER_F_REMOVE_ME
    assert bytes(entries[1].get_attr("WGPEER_A_PRESHARED_KEY")) == psk
    assert all(e.get_attr("WGPEER_A_PRESHARED_KEY") is None for e in entries[2:])
    total = sum(len(e.get_attr("WGPEER_A_ALLOWEDIPS") or []) for e in entries[1:])
    assert total == 2000
    # Without a preshared key nothing is added (the kernel keeps a zero key).
    (plain,) = restart_messages("wg0", Peer(key), None)
    assert all(e.get_attr("WGPEER_A_PRESHARED_KEY") is None for e in _peers_of(plain))
    assert len(build_set_messages("wg0", [])) == 1
