"""Scenario 3: N concurrent sleeping children supervised by one loop.

Each measurement runs in a fresh interpreter (``python -m
benchmarks.concurrency --n N --loop L``) so loops and sizes do not disturb
each other; it prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import time
from typing import Any

import aiospaces
from aiospaces import CLONE_NEWPID, CLONE_NEWUSER

from ._harness import LagMeter, Row, run_fresh, run_on

HOLD = 600.0  # children sleep until killed


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


async def measure(n: int, via: str = "fork") -> dict[str, Any]:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    fds0 = len(os.listdir("/proc/self/fd"))
    rss0 = _rss_kib()
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    max_threads = _threads()
    if via == "spawner":  # started once, before the measured spawns
        await aiospaces._spawner.default_spawner().start()
    t0 = time.perf_counter()
    children = []
    with LagMeter() as lag:
        for i in range(n):
            children.append(
                await aiospaces.spawn(
                    time.sleep, CLONE_NEWUSER | CLONE_NEWPID, args=(HOLD,), map_zero=True, via=via
                )
            )
            if i % 100 == 0:
                max_threads = max(max_threads, _threads())
                await asyncio.sleep(0)  # let the heartbeat in, as a service would
        started = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    rss1 = _rss_kib()
    fds1 = len(os.listdir("/proc/self/fd"))
    alive = sum(1 for c in children if c.returncode is None)
    t1 = time.perf_counter()
    for c in children:
        c.kill()
    codes = await asyncio.gather(*(c.wait() for c in children))
    stopped = time.perf_counter() - t1
    await aiospaces.stop_spawner()
    return {
        "n": n,
        "alive_at_peak": alive,
        "start_all_s": started,
        "kill_reap_all_s": stopped,
        "threads_max": max_threads,
        "parent_cpu_ms_per_child": ((ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime))
        / n
        * 1e3,
        "parent_rss_kib_per_child": (rss1 - rss0) / n,
        "fds_per_child": (fds1 - fds0) / n,
        "all_killed": all(code == -9 for code in codes),
        **lag.summary(),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    ap.add_argument("--via", choices=["fork", "spawner"], default="fork")
    a = ap.parse_args()
    result = run_on(a.loop, measure(a.n, a.via))
    result["loop"] = a.loop
    result["via"] = a.via
    print(json.dumps(result))


def run(
    sizes: list[int], loops: list[str], vias: tuple[str, ...] = ("fork", "spawner")
) -> list[Row]:
    rows = []
    for n, loop, via in ((n, lp, v) for n in sizes for lp in loops for v in vias):
        name = f"{loop} via={via}"
        data, why = run_fresh("concurrency", "--n", str(n), "--loop", loop, "--via", via)
        if data is None:
            rows.append(Row("concurrency", f"{n} children", name, missing=why))
            continue
        rows.append(
            Row(
                "concurrency",
                f"{n} children",
                name,
                n,
                data["start_all_s"] * 1e3 / n,
                data["lag_p99_ms"],
                extra=data,
            )
        )
    return rows


if __name__ == "__main__":
    main()
