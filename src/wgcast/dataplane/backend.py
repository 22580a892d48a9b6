"""Which WireGuard back end drives an interface: kernel netlink or the UAPI socket.

`open_device(ifname, "auto")` asks rtnetlink what kind of link `ifname` is in the
current network namespace: a link of kind "wireguard" is kernel WireGuard (netlink);
anything else (wireguard-go and boringtun create a TUN device) is driven through the
cross-platform UAPI socket /var/run/wireguard/<ifname>.sock. `"uapi"` and `"netlink"`
force one and fail with a `BackendMismatch` naming the interface when it is the other
kind, instead of the daemon failing later with a less helpful errno.
"""

from __future__ import annotations

import asyncio
import errno
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

from wgcast.dataplane.netlink import NetlinkDevice
from wgcast.dataplane.types import DeviceNotFound, WireGuardBackend, WireGuardError
from wgcast.dataplane.uapi import SOCKET_DIR, UapiDevice

BackendChoice = Literal["auto", "uapi", "netlink"]
CHOICES: tuple[str, ...] = ("auto", "uapi", "netlink")


class BackendMismatch(WireGuardError):
    meaning = "the configured backend does not match the interface"


def link_kind(ifname: str) -> str | None:
    """The rtnetlink kind of link `ifname` ("wireguard", "tun", ...), "" for a link
    without a kind, None when no such link exists (current network namespace).

    pyroute2's synchronous socket cannot be used from a thread running an event loop:
    there it is asked from a short-lived thread (same network namespace as the caller).
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _link_kind(ifname)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="wgcast-linkkind") as ex:
        return ex.submit(_link_kind, ifname).result()


def _link_kind(ifname: str) -> str | None:
    import wgcast.dataplane.pyroute2_bare  # noqa: F401

    # isort: split
    from pyroute2.iproute import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    with IPRoute() as ipr:
        try:
            links: list[Any] = list(ipr.get_links(ifname=ifname))
        except NetlinkError as e:
            if e.code in (errno.ENODEV, errno.ENOENT):
                return None
            raise
        if not links:
            return None
        info = links[0].get_attr("IFLA_LINKINFO")
        kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
        return str(kind) if kind else ""


def choose(ifname: str, backend: str, kind: str | None, sock: str,
           has_socket: bool) -> Literal["uapi", "netlink"]:
    """The back end for `ifname`, given its link kind (None: no such link) and whether
    its UAPI socket `sock` exists. Pure. Raises `DeviceNotFound` / `BackendMismatch`."""
    if backend not in CHOICES:
        raise ValueError(f"backend must be one of {', '.join(CHOICES)}, got {backend!r}")
    is_kernel = kind == "wireguard"
    if backend == "netlink":
        if is_kernel:
            return "netlink"
        if kind is None:
            raise DeviceNotFound(errno.ENODEV, "open", f"{ifname}: no such interface "
                                 '(backend = "netlink" needs a kernel WireGuard link: '
                                 f"ip link add {ifname} type wireguard)")
        raise BackendMismatch(errno.EOPNOTSUPP, "open",
                              f'{ifname}: backend = "netlink" but {ifname} is a '
                              f"{kind or 'kindless'} link, not kernel WireGuard"
                              + (f" (it has a UAPI socket {sock}: use backend = \"uapi\" "
                                 'or "auto")' if has_socket else ""))
    if backend == "uapi":
        if is_kernel:
            raise BackendMismatch(errno.EOPNOTSUPP, "open",
                                  f'{ifname}: backend = "uapi" but {ifname} is a kernel '
                                  'WireGuard link (no UAPI socket): use backend = "netlink" '
                                  'or "auto"')
        return "uapi"
    # auto
    if is_kernel:
        return "netlink"
    if kind not in (None, "", "tun") and not has_socket:
        # An Ethernet, veth or bridge link: not WireGuard of any kind.
        raise BackendMismatch(errno.EOPNOTSUPP, "open",
                              f"{ifname}: a {kind} link, not a WireGuard interface (no "
                              f"UAPI socket {sock}); `interface` names the WireGuard "
                              f'interface, a plain LAN goes in a [[lan]] section '
                              f'(interface = "{ifname}"), see docs/interop.md')
    if kind is None and not has_socket:
        raise DeviceNotFound(errno.ENODEV, "open",
                             f"{ifname}: no such interface and no UAPI socket {sock} "
                             "(start wireguard-go or create a kernel WireGuard link first)")
    return "uapi"


def open_device(ifname: str, backend: str = "auto", *,
                socket_dir: str = SOCKET_DIR) -> WireGuardBackend:
    """A `WireGuardBackend` for `ifname` as `backend` ("auto", "uapi", "netlink") says."""
    sock = os.path.join(socket_dir, f"{ifname}.sock")
    kind = link_kind(ifname)
    if choose(ifname, backend, kind, sock, os.path.exists(sock)) == "netlink":
        return NetlinkDevice(ifname)
    return UapiDevice(ifname, socket_dir=socket_dir)
