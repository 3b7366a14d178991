"""Exec mode against the usual ways to start /bin/true in namespaces.

Interleaved (A B C D A B C D ...) so that load from elsewhere on the machine
hits every contender alike; prints the median and p90 per contender and the
ratios of ``aiospaces.run`` to the others.

    python benchmarks/exec_bench.py [--rounds 200] [--uvloop]

``run`` uses user+pid+mnt+uts+ipc namespaces with ``map_zero=True`` (so it
starts a pid-namespace init), like ``unshare -Ur -pf -m -u -i``; bwrap gets
``--unshare-all`` (which adds net and cgroup) with ``/`` bound read-only.
``--as-pid-1`` adds a fifth contender: ``run(..., as_pid_1=True)`` (no init).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import time
from collections.abc import Awaitable, Callable

from aiospaces import (
    CLONE_NEWIPC,
    CLONE_NEWNS,
    CLONE_NEWPID,
    CLONE_NEWUSER,
    CLONE_NEWUTS,
)
from aiospaces._process import run as aiospaces_run_fn

FLAGS = CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC
Case = Callable[[], Awaitable[None]]


async def aiospaces_run() -> None:
    done = await aiospaces_run_fn(["/bin/true"], FLAGS, map_zero=True)
    assert done.returncode == 0, done


async def aiospaces_run_pid1() -> None:
    done = await aiospaces_run_fn(["/bin/true"], FLAGS, map_zero=True, as_pid_1=True)
    assert done.returncode == 0, done


async def _exec(*argv: str) -> None:
    proc = await asyncio.create_subprocess_exec(*argv)
    rc = await proc.wait()
    assert rc == 0, (argv, rc)


async def unshare() -> None:
    await _exec("unshare", "-Ur", "-pf", "-m", "-u", "-i", "/bin/true")


async def bwrap() -> None:
    await _exec("bwrap", "--unshare-all", "--ro-bind", "/", "/", "/bin/true")


async def plain() -> None:
    await _exec("/bin/true")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main(rounds: int, as_pid_1: bool) -> int:
    cases: dict[str, Case] = {"aiospaces.run": aiospaces_run}
    if as_pid_1:
        cases["run as_pid_1"] = aiospaces_run_pid1
    cases["unshare"] = unshare
    if shutil.which("bwrap"):
        cases["bwrap"] = bwrap
    else:
        print("bwrap: MISSING (Debian package bubblewrap) — not measured")
    cases["plain exec"] = plain
    times: dict[str, list[float]] = {name: [] for name in cases}
    for fn in cases.values():  # warm up: caches, first-use imports
        for _ in range(3):
            await fn()
    for _ in range(rounds):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            await fn()
            times[name].append(time.perf_counter() - t0)
    loop = type(asyncio.get_running_loop()).__module__.split(".")[0]
    print(f"{rounds} rounds, interleaved, loop={loop}, python {sys.version.split()[0]}")
    print(f"{'contender':<16}{'median ms':>11}{'p90 ms':>9}")
    med = {}
    for name, ts in times.items():
        med[name] = statistics.median(ts)
        print(f"{name:<16}{med[name] * 1e3:>11.2f}{pct(ts, 0.9) * 1e3:>9.2f}")
    ours = med["aiospaces.run"]
    for other in ("unshare", "bwrap", "plain exec"):
        if other in med:
            print(f"aiospaces.run / {other}: {ours / med[other]:.2f}x")
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--uvloop", action="store_true", help="run on uvloop")
    ap.add_argument("--as-pid-1", action="store_true", help="also time as_pid_1=True")
    ns = ap.parse_args()
    if ns.uvloop:
        import uvloop

        sys.exit(uvloop.run(main(ns.rounds, ns.as_pid_1)))
    sys.exit(asyncio.run(main(ns.rounds, ns.as_pid_1)))
