"""Small helpers shared by the tests (no mocks: they read /proc)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

NAMESPACES = ("user", "pid", "mnt", "net", "uts", "ipc", "cgroup", "time")


def ns_ids(pid: int | str = "self") -> dict[str, int]:
    """Namespace inode numbers of a process, from /proc/PID/ns."""
    out = {}
    for ns in NAMESPACES:
        try:
            link = os.readlink(f"/proc/{pid}/ns/{ns}")
        except OSError:
            continue
        out[ns] = int(link.split("[")[1].rstrip("]"))
    return out


def proc_state(pid: int) -> str | None:
    """The one-letter state of ``pid`` ('Z' for a zombie), or None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def run_python(code: str, *args: str, timeout: float = 60) -> subprocess.Popen[str]:
    """Start a Python subprocess running ``code`` (dedented) with our path."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def thread_count() -> int:
    return len(os.listdir("/proc/self/task"))


def children_of(pid: int) -> set[int]:
    """The children of ``pid`` (running or zombie), from /proc."""
    out: set[int] = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out.update(int(p) for p in f.read().split())
        except OSError:
            pass
    return out
