"""Helpers for the limits/hardening tests: a cgroup leftover check, /proc readers."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

import pytest

from aiospaces import cgroups


def cgroup_leftovers() -> list[str]:
    """This process' sandbox cgroup directories still present (any version)."""
    s = cgroups.available()
    bases = {*s.v1.values(), *([s.v2_base] if s.v2_base else [])}
    prefix = f"aiospaces-{os.getpid()}-"
    out = []
    for base in bases:
        with contextlib.suppress(OSError):
            out += [os.path.join(base, n) for n in os.listdir(base) if n.startswith(prefix)]
    return sorted(out)


@pytest.fixture(autouse=True)
def no_cgroup_leftovers() -> Iterator[None]:
    """Fail a test that leaves a sandbox cgroup behind (after a short grace)."""
    yield
    deadline = time.monotonic() + 3.0
    while (left := cgroup_leftovers()) and time.monotonic() < deadline:
        time.sleep(0.02)
    if left:
        pytest.fail(f"cgroup directories left behind: {left}")


def status(field: str) -> str:
    """A field of /proc/self/status (run inside the child)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return line.split(":", 1)[1].strip()
    raise KeyError(field)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
