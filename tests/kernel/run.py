"""Boot Debian's kernel under software emulation (virtme-ng) and run the kernel tests.

`make test-kernel` installs what this needs and runs it. The guest runs this machine's
own userspace read-only (so the project's .venv works inside) on Debian's
linux-image-amd64, which has WireGuard, netem and nftables NAT. /dev/kvm exists here but
an accelerated guest hangs at boot: --disable-kvm (TCG) it is, 10-20x slower than the
host, so the tests inside assert behaviour and never timings.

Prints the guest's output, then one summary line ("test-kernel: N passed, N failed,
N skipped"); exits non-zero on any failure, on a guest that did not finish in time, or
when no test ran. The guest is killed (its process group) on timeout and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import re
import shlex
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
#: The 9p tag of the cached root export (guest.sh mounts it).
CACHED_TAG = "wgcastroot"


def find_kernel() -> str:
    """The newest /boot/vmlinuz-* whose modules include WireGuard (Debian's package)."""
    found = []
    for path in glob.glob("/boot/vmlinuz-*"):
        ver = path.removeprefix("/boot/vmlinuz-")
        if glob.glob(f"/lib/modules/{ver}/kernel/drivers/net/wireguard/wireguard.ko*"):
            found.append((tuple(int(x) for x in re.findall(r"\d+", ver)), path))
    if not found:
        sys.exit("test-kernel: no /boot/vmlinuz-* with a WireGuard module: "
                 "apt-get install linux-image-amd64")
    return max(found)[1]


def summary(text: str) -> dict[str, int]:
    """Counts from pytest's closing line(s) in the guest's output."""
    counts = {"passed": 0, "failed": 0, "skipped": 0, "error": 0}
    closing = False
    for line in text.splitlines():
        if re.search(r"\d+ (passed|failed|skipped|errors?)\b.* in [\d.]+s", line):
            closing = True
            for n, what in re.findall(r"(\d+) (passed|failed|skipped|errors?)", line):
                counts["error" if what.startswith("error") else what] += int(n)
    if not closing:  # killed before pytest's closing line: count its per-test verdicts
        for what in re.findall(r"::\S+ (PASSED|FAILED|SKIPPED|ERROR)", text):
            counts["error" if what == "ERROR" else what.lower()] += 1
    return counts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kernel", default=os.environ.get("WGCAST_KERNEL"),
                    help="vmlinuz to boot (default: the newest Debian one in /boot)")
    ap.add_argument("--timeout", type=float, default=float(os.environ.get(
        "WGCAST_KERNEL_TIMEOUT", "590")), help="seconds for the whole guest run")
    ap.add_argument("--memory", default="2G")
    ap.add_argument("--log", default=os.path.join("/tmp", f"wgcast-test-kernel-{os.getpid()}.log"))
    ap.add_argument("--qemu-opts", default=os.environ.get("WGCAST_QEMU_OPTS", ""),
                    help="extra QEMU arguments (vng --qemu-opts)")
    ap.add_argument("--cmd", default=None,
                    help="run this shell command in the guest instead of the tests")
    ap.add_argument("pytest_args", nargs="*", help="passed to pytest in the guest")
    args, extra = ap.parse_known_args()  # unknown options go to pytest too (-x, -k ...)
    args.pytest_args = [*extra, *args.pytest_args]
    kernel = args.kernel or find_kernel()
    guest = os.path.join(ROOT, "tests", "kernel", "guest.sh")
    inner = " ".join(shlex.quote(a) for a in [guest, *args.pytest_args])
    if args.cmd:
        inner = f"WGCAST_GUEST_CMD={shlex.quote(args.cmd)} {inner}"
    cpus = str(min(2, os.cpu_count() or 1))
    # A second 9p export of / that guest.sh mounts with cache=loose over /usr and this
    # tree: virtme-ng's root has no cache, so every process read python, its libraries
    # and every module again over 9p (a virtio round trip per page and lookup).
    qemu_opts = (f"-fsdev local,id={CACHED_TAG},path=/,security_model=none,readonly=on,"
                 f"multidevs=remap -device virtio-9p-pci,fsdev={CACHED_TAG},"
                 f"mount_tag={CACHED_TAG} {args.qemu_opts}").strip()
    cmd = ["vng", "--disable-kvm", "-r", kernel, "--memory", args.memory, "--cpus", cpus,
           f"--qemu-opts={qemu_opts}", "--exec", inner]
    env = {**os.environ, "PATH": os.path.join(ROOT, ".venv", "bin") + ":" + os.environ["PATH"]}
    # The tree is read-only in the guest and compiling there is slow (emulated CPU):
    # every Python process would compile wgcast again. Byte-compile it here once
    # (__pycache__ is git-ignored).
    subprocess.run([sys.executable, "-m", "compileall", "-q", "-j", "0", "src", "tests"],
                   cwd=ROOT, check=True, env={**env, "PYTHONDONTWRITEBYTECODE": ""},
                   stdout=subprocess.DEVNULL)
    print(f"test-kernel: booting {kernel} (software emulation, {cpus} cpus), log {args.log}",
          flush=True)
    t0 = time.monotonic()
    out: list[str] = []
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace", start_new_session=True)
    timed_out = False

    def kill_guest(*_: object) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # our own session: vng and its qemu

    def on_sigterm(*_: object) -> None:
        kill_guest()
        sys.exit(143)

    old = signal.signal(signal.SIGTERM, on_sigterm)
    timer = None
    try:
        import threading

        def on_timeout() -> None:
            nonlocal timed_out
            timed_out = True
            kill_guest()

        timer = threading.Timer(args.timeout, on_timeout)
        timer.start()
        assert proc.stdout is not None
        with open(args.log, "w") as log:
            for line in proc.stdout:  # ends when the guest (and qemu) exits or is killed
                out.append(line)
                log.write(f"[{time.monotonic() - t0:6.1f}s] {line}")  # where the time goes
                sys.stdout.write(line)
                sys.stdout.flush()
        rc = proc.wait(timeout=60)
    except KeyboardInterrupt:
        kill_guest()
        raise
    finally:
        if timer is not None:
            timer.cancel()
        kill_guest()
        signal.signal(signal.SIGTERM, old)
    wall = time.monotonic() - t0
    text = "".join(out)
    if args.cmd:
        print(f"test-kernel: guest command exited {rc} after {wall:.0f}s wall")
        return rc
    c = summary(text)
    failed = c["failed"] + c["error"]
    problems = []
    if timed_out:
        problems.append(f"guest killed after the {args.timeout:.0f}s deadline")
    elif rc != 0:
        problems.append(f"guest exited {rc}")
    if c["passed"] == 0:
        problems.append("no test passed in the guest")
    print(f"test-kernel: {wall:.0f}s wall, kernel {os.path.basename(kernel)}"
          + (f"; {'; '.join(problems)}" if problems else ""))
    print(f"test-kernel: {c['passed']} passed, {failed} failed, {c['skipped']} skipped")
    return 1 if problems or failed else 0


if __name__ == "__main__":
    sys.exit(main())
