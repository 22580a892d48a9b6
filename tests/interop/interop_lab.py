"""wgcast against other Babel implementations over a real WireGuard link.

Two namespaces joined by a veth pair (the underlay); wireguard-go in each, one peer each
at AllowedIPs ::/0, 0.0.0.0/0 (the way babeld users build WireGuard links). Namespace A
runs `wgcast run` (its peer configured `babel = "generic"`), namespace B the other
implementation on its WireGuard interface, which has the link-local address fe80::b.

    A: wgcast, fd00:a::1/128 and 10.0.1.1/32 (own), anycast groups fd00:aa::1/128 and
       10.0.11.1/32 joined through the API (so they can be retracted)
    B: the peer, fd00:b::1/128 and 10.0.2.1/32, retracted the peer's own way
    both: the anycast prefixes fd00:cc::1/128 and 10.0.12.1/32 (A a group joined through
       the API, B the peer's own way), each side preferring its own instance

Every wait has a deadline; namespaces and processes (only ours, by pid) are removed in
a finalizer, also when a test fails. Traffic stays inside the two namespaces.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from netns.conftest import Netns, make_netns, skip_reason, unique_ifname  # noqa: E402
from wgcast.keys import control_address  # noqa: E402

A_V6, A_V4 = "fd00:a::1/128", "10.0.1.1/32"
A_ANY6, A_ANY4 = "fd00:aa::1/128", "10.0.11.1/32"
B_V6, B_V4 = "fd00:b::1/128", "10.0.2.1/32"
B_LL = "fe80::b"
#: Anycast prefixes served on both sides.
C_V6, C_V4 = "fd00:cc::1/128", "10.0.12.1/32"
#: Where the figures of each run are appended (one JSON object a line).
RESULTS = Path(os.environ.get("WGCAST_INTEROP_RESULTS", "/tmp/wgcast-interop.jsonl"))


BABELD_114 = ROOT / "build" / "babeld-1.14" / "babeld"


def babeld_114() -> str | None:
    """babeld 1.14 built from ../shared/anchors into build/ (not committed)."""
    if not BABELD_114.exists():
        script = Path("/work/shared/anchors/build-babeld.sh")
        if not script.exists():
            return None
        r = subprocess.run([str(script), str(BABELD_114.parent)], capture_output=True,
                           text=True, timeout=300)
        if r.returncode != 0:
            return None
    return str(BABELD_114)


def wait_until(cond: Callable[[], object], timeout: float, what: str,
               every: float = 0.01) -> float:
    """Poll `cond` until true; the time it took. Fails the test at the deadline."""
    t0 = time.monotonic()
    while True:
        if cond():
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


def genkey() -> tuple[str, str]:
    priv = subprocess.run(["wg", "genkey"], check=True, capture_output=True,
                          text=True).stdout.strip()
    pub = subprocess.run(["wg", "pubkey"], input=priv, check=True, capture_output=True,
                         text=True).stdout.strip()
    return priv, pub


def kernel_route(ns: str, prefix: str) -> str:
    """The kernel's route for exactly `prefix` in namespace `ns` ('' if none)."""
    fam = "-6" if ":" in prefix else "-4"
    r = subprocess.run(["ip", "-n", ns, fam, "route", "show", "exact", prefix],
                       capture_output=True, text=True, timeout=5)
    return r.stdout.strip()


@dataclass
class Link:
    """Namespaces A and B, each with a wireguard-go interface peered with the other."""

    tmp: Path
    a: Netns
    b: Netns
    a_if: str
    b_if: str
    a_pub: str
    b_pub: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    wgcast: subprocess.Popen[bytes] | None = None
    #: Run at close, after the processes are gone.
    cleanup: list[Callable[[], object]] = field(default_factory=list)
    frr_dir: Path | None = None
    #: A's WireGuard private key (base64): derives the key that signs A's routes.
    a_priv: str = ""

    @property
    def a_sock(self) -> str:
        return str(self.tmp / "a.sock")

    def spawn(self, ns: Netns, cmd: list[str], log: str,
              env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        out = open(self.tmp / log, "ab")  # noqa: SIM115 (closed with the process)
        p = subprocess.Popen(["ip", "netns", "exec", ns.name, *cmd], stdin=subprocess.DEVNULL,
                             stdout=out, stderr=subprocess.STDOUT,
                             env={**os.environ, **(env or {})})
        out.close()
        self.procs.append(p)
        return p

    def roster(self) -> str:
        """Config lines of a signed roster listing A with its signing key: A signs what
        it originates, so B gets Updates with the OriginSig sub-TLV (113), which an RFC
        8966 speaker must ignore. B, a generic peer, is judged by address (not listed)."""
        from wgcast.keys import decode_key
        from wgcast.origin import signing_public
        from wgcast.roster import generate_mesh_key, parse

        mesh_priv, mesh_pub = generate_mesh_key()
        sk = base64.b64encode(signing_public(decode_key(self.a_priv))).decode()
        text = f"""serial = 1
mesh_prefixes = ["fd00::/8", "10.0.0.0/8"]
[[members]]
name = "a"
public_key = "{self.a_pub}"
prefixes = ["{A_V6}", "{A_V4}"]
groups = ["{A_ANY6}", "{A_ANY4}", "{C_V6}", "{C_V4}"]
sign_key = "{sk}"
"""
        path = self.tmp / "roster.toml"
        path.write_text(parse(text).signed(mesh_priv).to_toml())
        return f'roster = "{path}"\nmesh_key = "{base64.b64encode(mesh_pub).decode()}"'

    def start_wgcast(self, ipv4_next_hop: str | None = None, sign: bool = True,
                     extra: str = "") -> None:
        """wgcast in A; `extra`: more TOML at the end (e.g. [[lan]] sections)."""
        conf = self.tmp / "a.toml"
        nh = f'ipv4_next_hop = "{ipv4_next_hop}"' if ipv4_next_hop else ""
        roster = self.roster() if sign and self.a_priv else ""
        conf.write_text(f"""
{roster}
interface = "{self.a_if}"
api_socket = "{self.a_sock}"
state_file = "{self.tmp}/a.state"
probe_port = 0
addresses = ["{A_V6}", "{A_V4}"]
anycast = ["{A_ANY6}", "{A_ANY4}", "{C_V6}", "{C_V4}"]

[[peers]]
name = "b"
public_key = "{self.b_pub}"
babel = "generic"
babel_address = "{B_LL}"
may_originate = ["fd00:b::/48", "10.0.2.0/24"]
{nh}

[[groups]]
prefix = "{A_ANY6}"

[[groups]]
prefix = "{A_ANY4}"

[[groups]]
prefix = "{C_V6}"

[[groups]]
prefix = "{C_V4}"
{extra}
""")
        self.wgcast = self.spawn(self.a, [str(ROOT / ".venv/bin/wgcast"), "run", "-v", "-c",
                                          str(conf)], "wgcast.log")
        wait_until(self._api_answers, 60, "wgcast's API socket to answer")

    def _api_answers(self) -> bool:
        """The daemon answers on its API socket (the file alone may exist before it
        listens, or be a leftover)."""
        from wgcast.client import Client, WgcastError
        if not os.path.exists(self.a_sock):
            return False
        try:
            with Client(self.a_sock) as c:
                c.request({"cmd": "status"})
        except (WgcastError, OSError):
            return False
        return True

    def api(self, req: str) -> dict[str, Any]:
        from wgcast.client import Client
        with Client(self.a_sock) as c:
            return c.request({"cmd": req})

    def wgcast_peer(self) -> dict[str, Any]:
        peers = self.api("peers")["peers"]
        assert isinstance(peers, list)
        return dict(peers[0])

    def log(self, name: str) -> str:
        p = self.tmp / name
        return p.read_text(errors="replace")[-3000:] if p.exists() else ""

    def close(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=5)
        self.a.close()
        self.b.close()
        for fn in self.cleanup:
            fn()


#: IPv4 addresses on the WireGuard link, for peers that need IPv4 next hops.
A_LINK4, B_LINK4 = "10.99.0.1", "10.99.0.2"


def add_ipv4_link(link: Link) -> None:
    link.a.run("ip", "addr", "add", f"{A_LINK4}/24", "dev", link.a_if)
    link.b.run("ip", "addr", "add", f"{B_LINK4}/24", "dev", link.b_if)


def make_link(tmp: Path) -> Link:
    a, b = make_netns(), make_netns()
    try:
        va, vb = unique_ifname("vA"), unique_ifname("vB")
        subprocess.run(["ip", "link", "add", va, "netns", a.name, "type", "veth", "peer",
                        "name", vb, "netns", b.name], check=True, capture_output=True)
        a.run("ip", "addr", "add", "192.168.77.1/24", "dev", va)
        b.run("ip", "addr", "add", "192.168.77.2/24", "dev", vb)
        a.run("ip", "link", "set", va, "up")
        b.run("ip", "link", "set", vb, "up")
        a_if = a.start_wireguard_go(unique_ifname("wiA"))
        b_if = b.start_wireguard_go(unique_ifname("wiB"))
        a_priv, a_pub = genkey()
        b_priv, b_pub = genkey()
        for ns, ifname, priv, peer, ep, port in (
                (a, a_if, a_priv, b_pub, "192.168.77.2:51902", "51901"),
                (b, b_if, b_priv, a_pub, "192.168.77.1:51901", "51902")):
            kf = tmp / f"{ifname}.key"
            kf.write_text(priv + "\n")
            ns.run("wg", "set", ifname, "private-key", str(kf), "listen-port", port, "peer",
                   peer, "endpoint", ep, "allowed-ips", "::/0,0.0.0.0/0",
                   "persistent-keepalive", "1")
        # B speaks from fe80::b only (no address generated by the kernel beside it).
        b.run("ip", "link", "set", b_if, "addrgenmode", "none")
        b.run("ip", "addr", "add", f"{B_LL}/64", "dev", b_if)
        b.run("ip", "link", "set", b_if, "multicast", "on", "up")
        b.run("ip", "addr", "add", B_V6, "dev", "lo")
        b.run("ip", "addr", "add", B_V4, "dev", "lo")
        for c in (C_V6, C_V4):  # B's anycast instances (babeld, FRR: redistributed)
            b.run("ip", "addr", "add", c, "dev", "lo")
        for ns in (a, b):
            ns.run("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
            ns.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
    except BaseException:
        a.close()
        b.close()
        raise
    return Link(tmp, a, b, a_if, b_if, a_pub, b_pub, a_priv=a_priv)


@pytest.fixture
def link(tmp_path: Path) -> Iterator[Link]:
    reason = skip_reason()
    if reason is None and shutil.which("wg") is None:
        reason = "interop tests need wg (wireguard-tools)"
    if reason:
        pytest.skip(reason)
    lk = make_link(tmp_path)
    try:
        yield lk
    finally:
        lk.close()


def record(impl: str, **figures: object) -> None:
    with open(RESULTS, "a") as f:
        f.write(json.dumps({"impl": impl, "t": time.time(), **figures}) + "\n")


def a_control(link: Link) -> str:
    return str(control_address(base64.b64decode(link.a_pub)))


def local_query(ns: str, port: int, command: str, timeout: float = 2.0) -> str:
    """babeld's local configuration interface (-G port) inside namespace `ns`."""
    code = ("import socket,sys,time\n"
            f"s=socket.create_connection(('::1',{port}),timeout={timeout})\n"
            f"s.sendall(b'{command}\\n');time.sleep(0.3);s.settimeout(0.5)\n"
            "d=b''\n"
            "try:\n"
            "  while True:\n"
            "    c=s.recv(65536)\n"
            "    if not c: break\n"
            "    d+=c\n"
            "except Exception: pass\n"
            "sys.stdout.write(d.decode(errors='replace'))\n")
    r = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code],
                       capture_output=True, text=True, timeout=timeout + 5)
    return r.stdout

