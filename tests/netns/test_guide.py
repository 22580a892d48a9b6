"""docs/operations.md's hand-built mesh, run as written: keys to failover.

The guide's blocks are marked `<!-- guide: NODES [background] [expect=TEXT]
[absent=TEXT] -->` (expect/absent: retried until the output holds / lacks it); this
test runs them in order, each node a network namespace on one bridge (a fourth
namespace) at its underlay address 198.51.100.N. What a reader would do between the
blocks by hand (copy the public keys) is the `copy-public-keys` block, done here by file
copies. `wg0` becomes a unique interface name per node (wireguard-go's UAPI sockets are
shared by all namespaces), the /etc and /srv paths a per-node directory. Every wait has
a deadline; the namespaces and every process in them go away also when the test fails.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import SOCKET_DIR, skip_reason, unique_ifname

pytestmark = pytest.mark.netns

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
NODES = ("n1", "n2", "n3")
BLOCK = re.compile(r"<!-- guide: ([^>]*?) -->\n```(?:sh|ini|toml)?\n(.*?)```", re.S)
#: A block with expect= is retried until its output holds the text; this bounds it.
EXPECT_TIMEOUT = 60.0


@dataclass(frozen=True, slots=True)
class Step:
    nodes: tuple[str, ...]
    script: str
    background: bool = False
    expect: str | None = None
    absent: str | None = None
    copy_keys: bool = False


def guide_steps(text: str) -> list[Step]:
    """The marked blocks of the guide, in order."""
    steps = []
    for marks, script in BLOCK.findall(text):
        words = marks.split()
        if words == ["copy-public-keys"]:
            steps.append(Step((), script, copy_keys=True))
            continue
        nodes = tuple(w for w in words if w in NODES)
        opts = dict(w.split("=", 1) for w in words if "=" in w)
        unknown = [w for w in words if w not in NODES and w != "background" and "=" not in w]
        assert nodes and not unknown and set(opts) <= {"expect", "absent"}, (
            f"bad guide marker: {marks!r}")
        steps.append(Step(nodes, script, "background" in words, opts.get("expect"),
                          opts.get("absent")))
    return steps


@dataclass
class Node:
    name: str
    ns: str
    iface: str
    dir: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def localise(self, script: str) -> str:
        """The guide's paths and interface name, made this node's own."""
        script = re.sub(r"wg-quick (up|down) wg0\b",
                        rf"wg-quick \1 {self.dir}/wireguard/wg0.conf", script)
        script = re.sub(r"/etc/(wireguard|wgcast)\b", rf"{self.dir}/\1", script)
        script = script.replace("/srv/who", f"{self.dir}/who")
        return script.replace("wg0", self.iface)

    def argv(self, script: str) -> list[str]:
        env = [f"NODE={self.name}", f"PATH={Path(sys.executable).parent}:{os.environ['PATH']}"]
        return ["ip", "netns", "exec", self.ns, "env", *env,
                "bash", "-e", "-o", "pipefail", "-c", self.localise(script)]


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=20)


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[dict[str, Node]]:
    """Three namespaces on a bridge at 198.51.100.N/24; torn down with all they hold."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    for tool in ("wg-quick", "curl"):
        if shutil.which(tool) is None:
            pytest.skip(f"the guide needs {tool}")
    tag = f"g{os.getpid() % 0xFFFFF:05x}"
    hub = f"wgcast-{tag}-hub"
    nodes: dict[str, Node] = {}
    made: list[str] = []
    try:
        sh("ip", "netns", "add", hub)
        made.append(hub)
        sh("ip", "-n", hub, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", hub, "link", "set", "br0", "up")
        for i, name in enumerate(NODES, 1):
            ns = f"wgcast-{tag}-{name}"
            sh("ip", "netns", "add", ns)
            made.append(ns)
            d = tmp_path / name
            d.mkdir()
            nodes[name] = Node(name, ns, unique_ifname("wgg"), d)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name",
               f"v{name}", "netns", hub)
            sh("ip", "-n", ns, "addr", "add", f"198.51.100.{i}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", hub, "link", "set", f"v{name}", "master", "br0", "up")
        yield nodes
    finally:
        for n in nodes.values():
            for p in n.procs:  # our own children, by process group (start_new_session)
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGTERM)
            for p in n.procs:
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait(5)
            subprocess.run(n.argv("wg-quick down wg0"), capture_output=True, timeout=20)
        for ns in made:
            # What wg-quick left (the wireguard-go it daemonised) runs in a namespace this
            # test made: those pids are ours.
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True,
                                  text=True, timeout=10).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
        for n in nodes.values():
            for leftover in (f"{SOCKET_DIR}/{n.iface}.sock", f"/run/wgcast/{n.iface}.sock",
                             *(f"/var/lib/wgcast/{n.iface}.state{x}"
                               for x in ("", ".lock", ".policy"))):
                if os.path.exists(leftover):  # uniquely named: only ever ours
                    os.unlink(leftover)


def copy_public_keys(nodes: dict[str, Node]) -> None:
    for src in nodes.values():
        for dst in nodes.values():
            if dst is not src:
                shutil.copy(src.dir / "wireguard" / f"{src.iface}.pub",
                            dst.dir / "wireguard" / f"{src.name}.pub")


def run_until(node: Node, step: Step, log: list[str]) -> None:
    """A foreground block: exit 0 (and the expected text, retried until a deadline)."""
    deadline = time.monotonic() + (EXPECT_TIMEOUT if step.expect or step.absent else 0.0)
    tries = 0
    while True:
        tries += 1
        r = subprocess.run(node.argv(step.script), capture_output=True, text=True,
                           timeout=60)
        ok = (r.returncode == 0 and (step.expect is None or step.expect in r.stdout)
              and (step.absent is None or step.absent not in r.stdout))
        if ok or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    log.append(f"{node.name}$ {step.script.strip()[:60]!r}: exit {r.returncode}, "
               f"{tries} tries, {r.stdout.strip()[-80:]!r}")
    assert ok, (f"{node.name}: {step.script!r} -> exit {r.returncode} "
                f"(expected {step.expect!r}, not {step.absent!r})\n{r.stdout}\n{r.stderr}\n"
                + daemon_logs(node))


def daemon_logs(node: Node) -> str:
    out = []
    for f in sorted(node.dir.glob("bg*.log")):
        out.append(f"--- {node.name} {f.name}\n{f.read_text()[-3000:]}")
    return "\n".join(out)


def test_the_guide_reaches_failover(mesh: dict[str, Node]) -> None:
    steps = guide_steps(GUIDE.read_text())
    assert any(s.expect == "n3" for s in steps), "the guide lost its failover step"
    log: list[str] = []
    t0 = time.monotonic()
    failed_at: float | None = None
    for step in steps:
        if step.copy_keys:
            copy_public_keys(mesh)
            continue
        for name in step.nodes:
            node = mesh[name]
            if step.background:
                with open(node.dir / f"bg{len(node.procs)}.log", "wb") as out:
                    node.procs.append(subprocess.Popen(
                        node.argv(step.script), stdout=out, stderr=out,
                        stdin=subprocess.DEVNULL, start_new_session=True))
                continue
            if "wg-quick down" in step.script:
                failed_at = time.monotonic()
            run_until(node, step, log)
            if step.expect == "n3" and failed_at is not None:
                log.append(f"  answered by n3 {time.monotonic() - failed_at:.2f}s after "
                           "n1's wg-quick down")
        for name in step.nodes:
            for p in mesh[name].procs:
                assert p.poll() is None, (f"{name}: a background block exited "
                                          f"{p.returncode}\n" + daemon_logs(mesh[name]))
    print(f"guide: {len(steps)} blocks in {time.monotonic() - t0:.1f}s")
    print("\n".join(log))
