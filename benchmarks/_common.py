"""What the benchmark scripts share: a free port, a process's memory, a measured child run.

The scripts import it as `_common` (Python puts a script's own folder on sys.path).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

_MEASURE = (
    "import resource, subprocess, sys\n"
    "code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode\n"
    "print(code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def peak_and_seconds(command: list[str]) -> tuple[float, float]:
    """Peak RSS in MiB of `command` (run in a fresh measuring parent) and its wall time."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, *command], capture_output=True, text=True, check=True
    )
    seconds = time.perf_counter() - started
    code, kib = done.stdout.split()
    if code != "0":
        raise SystemExit(f"{' '.join(command)} exited {code}: {done.stderr}")
    return int(kib) / 1024, seconds


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def memory_mib(pid: int, field: str) -> float:
    """A memory figure of a running process in MiB: field VmRSS (now) or VmHWM (its peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    return float("nan")
