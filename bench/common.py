"""Helpers shared by the bench scripts: machine description, result files, statistics."""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def _cmd(argv: list[str]) -> str:
    try:
        cp = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    out = (cp.stdout or cp.stderr).strip()
    return out.splitlines()[0] if out else "?"


def machine() -> dict[str, Any]:
    """CPU model and count, memory, kernel, Python, wireguard-go and babeld versions."""
    cpu = "?"
    lscpu: dict[str, str] = {}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            k, _, v = line.partition(":")
            lscpu[k.strip()] = v.strip()
        cpu = lscpu.get("Model name", "?")
    except (OSError, subprocess.TimeoutExpired):
        pass
    mem_gib = None
    try:
        with open("/proc/meminfo") as f:
            m = re.search(r"MemTotal:\s+(\d+) kB", f.read())
            if m:
                mem_gib = round(int(m.group(1)) / 1024 / 1024, 1)
    except OSError:
        pass
    from wgcast.lab.babeld import babeld_version

    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "threads_per_core": lscpu.get("Thread(s) per core"),
        "mhz": lscpu.get("CPU max MHz") or lscpu.get("CPU MHz"),
        "hypervisor": lscpu.get("Hypervisor vendor"),
        "memory_gib": mem_gib,
        "kernel": platform.release(),
        "os": _os_name(),
        "python": platform.python_version(),
        "wireguard_go": _cmd(["wireguard-go", "--version"]),
        "babeld": babeld_version(),
        "loadavg_at_start": os.getloadavg(),
    }


def _os_name() -> str:
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.platform()


def write(name: str, data: dict[str, Any], out: str | Path | None = None) -> Path:
    """Write bench/results/<name>.json (or ``out``) and return its path."""
    path = Path(out) if out else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"bench": name, "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **data}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)
    return path


def p50_max(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"p50": None, "max": None, "n": 0}
    return {"p50": round(statistics.median(values), 1), "max": round(max(values), 1),
            "n": len(values)}


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (0.0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None
