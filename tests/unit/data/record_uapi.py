"""Record real UAPI replies from wireguard-go for tests/unit/test_uapi_parse.py.

Run as root: .venv/bin/python tests/unit/data/record_uapi.py
It makes a throwaway namespace with two wireguard-go interfaces (fixed keys, fixed
ports) that handshake over 127.0.0.1 (persistent keepalive 1 s starts the handshake
without traffic), writes the raw replies (errno line included) next to this file, then
kills both processes and deletes the namespace.

Files: uapi_get_empty.txt (fresh device), uapi_get_peers.txt (device A after the
handshake: IPv4/IPv6/no endpoint, keepalive, counters, v4+v6 AllowedIPs),
uapi_get_many.txt (300 AllowedIPs), uapi_set_einval.txt, uapi_set_eproto.txt,
uapi_remove_probe.txt (reply to `allowed_ip=-PREFIX`), wireguard-go-version.txt.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
NS = f"wgcast-rec-{os.getpid()}"
IF_A, IF_B = f"wgrecA{os.getpid() % 10000}", f"wgrecB{os.getpid() % 10000}"


def key(seed: str) -> bytes:
    """A fixed private key, clamped as X25519 (and wireguard-go) store it."""
    k = bytearray(hashlib.sha256(seed.encode()).digest())
    k[0] &= 248
    k[31] = (k[31] & 127) | 64
    return bytes(k)


def pub(private: bytes) -> bytes:
    sys.path.insert(0, os.path.join(HERE, "..", "..", "..", "src"))
    from wgcast.keys import public_from_private

    return public_from_private(private)


PRIV_A, PRIV_B = key("wgcast test A"), key("wgcast test B")
PEER_C, PEER_D = pub(key("wgcast test C")), pub(key("wgcast test D"))


def uapi(ifname: str, text: str) -> bytes:
    s = socket.socket(socket.AF_UNIX)
    s.connect(f"/var/run/wireguard/{ifname}.sock")
    s.sendall(text.encode())
    out = b""
    while not out.endswith(b"\n\n"):
        chunk = s.recv(65536)
        if not chunk:
            break
        out += chunk
    s.close()
    return out


def save(name: str, data: bytes) -> None:
    with open(os.path.join(HERE, name), "wb") as f:
        f.write(data)
    print(f"wrote {name} ({len(data)} bytes)")


def main() -> None:
    procs: list[subprocess.Popen[bytes]] = []
    subprocess.run(["ip", "netns", "add", NS], check=True)
    try:
        subprocess.run(["ip", "-n", NS, "link", "set", "lo", "up"], check=True)
        env = {**os.environ, "WG_PROCESS_FOREGROUND": "1"}
        for ifname in (IF_A, IF_B):
            procs.append(
                subprocess.Popen(["ip", "netns", "exec", NS, "wireguard-go", ifname], env=env)
            )
        for ifname in (IF_A, IF_B):
            while not os.path.exists(f"/var/run/wireguard/{ifname}.sock"):
                time.sleep(0.01)
        save("uapi_get_empty.txt", uapi(IF_A, "get=1\n\n"))
        a, b = pub(PRIV_A), pub(PRIV_B)
        uapi(
            IF_A,
            f"set=1\nprivate_key={PRIV_A.hex()}\nlisten_port=51801\nfwmark=66\n"
            f"public_key={b.hex()}\nendpoint=127.0.0.1:51802\n"
            "persistent_keepalive_interval=1\n"
            "allowed_ip=10.20.0.0/16\nallowed_ip=fd20::/64\nallowed_ip=10.20.30.40/32\n"
            f"public_key={PEER_C.hex()}\nendpoint=[2001:db8::c]:51820\n"
            "allowed_ip=10.30.0.0/24\n"
            f"public_key={PEER_D.hex()}\nallowed_ip=0.0.0.0/0\nallowed_ip=::/0\n\n",
        )
        uapi(
            IF_B,
            f"set=1\nprivate_key={PRIV_B.hex()}\nlisten_port=51802\n"
            f"public_key={a.hex()}\nendpoint=127.0.0.1:51801\nallowed_ip=10.10.0.0/16\n\n",
        )
        for ifname in (IF_A, IF_B):
            subprocess.run(["ip", "-n", NS, "link", "set", ifname, "up"], check=True)
        deadline = time.monotonic() + 10
        while b"last_handshake_time_sec=0\n" in uapi(IF_A, "get=1\n\n").split(b"public_key")[1]:
            if time.monotonic() > deadline:
                raise SystemExit("no handshake within 10 s")
            time.sleep(0.05)
        time.sleep(1.5)  # a keepalive or two, so both counters move
        save("uapi_get_peers.txt", uapi(IF_A, "get=1\n\n"))
        many = "".join(f"allowed_ip=10.{i // 256}.{i % 256}.0/24\n" for i in range(300))
        uapi(IF_B, f"set=1\npublic_key={PEER_C.hex()}\n{many}\n")
        save("uapi_get_many.txt", uapi(IF_B, "get=1\n\n"))
        save("uapi_set_einval.txt", uapi(IF_B, "set=1\npublic_key=zz\n\n"))
        save("uapi_set_eproto.txt", uapi(IF_B, "set=1\nno equals sign\n\n"))
        save(
            "uapi_remove_probe.txt",
            uapi(
                IF_B,
                f"set=1\npublic_key={a.hex()}\nupdate_only=true\nallowed_ip=-192.0.2.255/32\n\n",
            ),
        )
        ver = subprocess.run(["wireguard-go", "--version"], capture_output=True).stdout
        save("wireguard-go-version.txt", ver.splitlines()[0] + b"\n")
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=5)
        subprocess.run(["ip", "netns", "del", NS])


if __name__ == "__main__":
    main()
