"""Shared test machinery.

* every async test runs twice: on the default asyncio loop and on uvloop
  (pytest-asyncio's ``pytest_asyncio_loop_factories`` hook);
* markers ``root``/``unprivileged``/``userns``/``newuidmap`` skip with a
  reason naming what the host lacks;
* an autouse leak check fails a test that leaves a child process, a zombie
  or an open fd behind (read from ``/proc``, not from our own bookkeeping).
"""

from __future__ import annotations

import asyncio
import gc
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

import aiospaces._spawner

try:
    import uvloop
except ImportError:  # pragma: no cover - the test extra installs it
    uvloop = None  # type: ignore[assignment]

sys.path.insert(0, str(Path(__file__).parent))  # the helpers module


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    factories: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
        "asyncio": asyncio.new_event_loop
    }
    if uvloop is not None:
        factories["uvloop"] = uvloop.new_event_loop
    return factories


def _userns_works() -> bool:
    try:
        r = subprocess.run(
            ["unshare", "-U", "-r", "true"], capture_output=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def _has_caps() -> bool:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16) != 0
    return False


USERNS = _userns_works()
IS_ROOT = os.geteuid() == 0 and _has_caps()
NEWUIDMAP = shutil.which("newuidmap") is not None and shutil.which("newgidmap") is not None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("root") and not IS_ROOT:
            item.add_marker(pytest.mark.skip(reason="needs root with capabilities (euid 0)"))
        if item.get_closest_marker("unprivileged") and os.geteuid() == 0:
            item.add_marker(pytest.mark.skip(reason="needs a non-root user; CI runs it as one"))
        if item.get_closest_marker("userns") and not USERNS:
            item.add_marker(
                pytest.mark.skip(reason="unprivileged user namespaces are disabled on this host")
            )
        if item.get_closest_marker("newuidmap") and not NEWUIDMAP:
            item.add_marker(
                pytest.mark.skip(reason="newuidmap/newgidmap missing (Debian package uidmap)")
            )


def open_fds() -> set[int]:
    """Our open fds, as /proc sees them (listdir's own fd is closed by then)."""
    return {int(n) for n in os.listdir("/proc/self/fd") if os.path.exists(f"/proc/self/fd/{n}")}


def child_pids() -> set[int]:
    """Every child of this process (running or zombie), from /proc."""
    pids: set[int] = set()
    for tid in os.listdir("/proc/self/task"):
        try:
            text = Path(f"/proc/self/task/{tid}/children").read_text()
        except OSError:
            continue
        pids.update(int(p) for p in text.split())
    return pids


def describe(pids: set[int]) -> str:
    out = []
    for pid in sorted(pids):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            out.append(f"{pid}:{stat.split(')')[1].split()[0]}:{stat.split('(')[1].split(')')[0]}")
        except OSError:
            out.append(f"{pid}:gone")
    return ", ".join(out)


@pytest.fixture(scope="session", autouse=True)
def _warm_up() -> None:
    # uvloop and asyncio allocate a few process-wide fds the first time a
    # loop is made; make them before the first baseline is taken.
    for factory in pytest_asyncio_loop_factories(None, None).values():  # type: ignore[arg-type]
        loop = factory()
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()


@pytest.fixture(autouse=True)
def no_leaks(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail the test if it leaves children, zombies or fds behind."""
    if request.node.get_closest_marker("allow_leaks"):
        yield
        return
    fds_before = open_fds()
    kids_before = child_pids()
    yield
    # A test's default spawner lives as long as its loop: stop it first.
    aiospaces._spawner.close_all_now()
    deadline = time.monotonic() + 2.0
    while True:
        gc.collect()
        fds = open_fds() - fds_before
        kids = child_pids() - kids_before
        if (not fds and not kids) or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    problems = []
    if kids:
        problems.append(f"children left behind: {describe(kids)}")
    if fds:
        problems.append(
            "fds left open: " + ", ".join(f"{fd}->{_readlink(fd)}" for fd in sorted(fds))
        )
    if problems:
        pytest.fail("; ".join(problems))


def _readlink(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "?"
