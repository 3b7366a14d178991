"""Soak: many spawn/exit cycles, mixed modes and namespaces, random cancellations.

    python -m benchmarks.soak --cycles 10000 [--loop uvloop]

Afterwards fds, threads and children (zombies included) must be back where
they started and the parent's RSS must have grown by less than 5 MiB (after a
warm-up of 200 cycles). Prints one JSON line; exits 1 if a check failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import sys
import time
from typing import Any

import aiospaces
from aiospaces import (
    CLONE_NEWIPC,
    CLONE_NEWNET,
    CLONE_NEWNS,
    CLONE_NEWPID,
    CLONE_NEWUSER,
    CLONE_NEWUTS,
)

from ._harness import run_on

FLAG_SETS = (
    0,
    CLONE_NEWUSER,
    CLONE_NEWUSER | CLONE_NEWPID,
    CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC,
    CLONE_NEWUSER | CLONE_NEWNET,
)
WARMUP = 200
RSS_LIMIT_KIB = 5 * 1024


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def _children() -> int:
    n = 0
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/children") as f:
            n += len(f.read().split())
    return n


def snapshot() -> dict[str, int]:
    return {
        "fds": len(os.listdir("/proc/self/fd")),
        "threads": len(os.listdir("/proc/self/task")),
        "children": _children(),
        "rss_kib": _rss_kib(),
    }


def _identity(x: int) -> int:
    return x


async def one(rnd: random.Random, userns: bool) -> str:
    flags = rnd.choice(FLAG_SETS if userns else (0,))
    mz = bool(flags & CLONE_NEWUSER)
    if rnd.random() < 0.5:
        via = rnd.choice(("fork", "spawner"))
        coro: Any = _fn_cycle(flags, mz, rnd.randrange(1000), via)
        kind = f"fn-{via}"
    else:
        coro = aiospaces.run(["/bin/true"], flags, map_zero=mz, timeout=30)
        kind = "exec"
    task = asyncio.ensure_future(coro)
    if rnd.random() < 0.15:  # a random cancellation somewhere in the cycle
        await asyncio.sleep(rnd.random() * 0.003)
        task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        return kind + "-cancelled"
    return kind


async def _fn_cycle(flags: int, map_zero: bool, value: int, via: str) -> None:
    child = await aiospaces.spawn(
        _identity,
        flags,
        args=(value,),
        map_zero=map_zero,
        via=via,  # type: ignore[arg-type]
    )
    assert await child.result() == value


async def soak(
    cycles: int, seed: int = 0, concurrency: int = 8, userns: bool = True
) -> dict[str, Any]:
    rnd = random.Random(seed)
    counts: dict[str, int] = {}
    # The loop's spawner lives for the whole run (as in a service): start it
    # before the first snapshot, stop it after the last.
    await aiospaces._spawner.default_spawner().start()
    before = snapshot()
    warm: dict[str, int] | None = None
    t0 = time.monotonic()
    done = 0
    while done < cycles:
        batch = min(concurrency, cycles - done)
        kinds = await asyncio.gather(*(one(rnd, userns) for _ in range(batch)))
        for k in kinds:
            counts[k] = counts.get(k, 0) + 1
        done += batch
        if warm is None and done >= min(WARMUP, cycles // 2):
            warm = snapshot()
    await asyncio.sleep(0.05)
    after = snapshot()
    await aiospaces.stop_spawner()
    assert warm is not None
    growth = after["rss_kib"] - warm["rss_kib"]
    checks = {
        "fds": after["fds"] == before["fds"],
        "threads": after["threads"] == before["threads"],
        "children": after["children"] == before["children"],
        "rss": growth < RSS_LIMIT_KIB,
    }
    return {
        "cycles": cycles,
        "seconds": round(time.monotonic() - t0, 1),
        "kinds": counts,
        "before": before,
        "after": after,
        "rss_growth_kib_after_warmup": growth,
        "ok": all(checks.values()),
        "checks": checks,
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cycles", type=int, default=10_000)
    ap.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    result = run_on(a.loop, soak(a.cycles, a.seed))
    result["loop"] = a.loop
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
