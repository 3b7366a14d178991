"""Throughput of trivial tasks: SandboxPool (fresh, warm) beside ProcessPoolExecutor.

    python benchmarks/pool_bench.py [--tasks 2000] [--size 8] [--rounds 5] [--uvloop]

Every candidate runs the same trivial task (``identity(i)``) ``--tasks``
times (``SandboxPool.map``, which keeps ``2 * size`` tasks ahead;
``run_in_executor`` calls gathered for the executor), in interleaved
rounds (A B C D A B C D ...) so that load from elsewhere on the machine
hits all of them alike; the median round is
reported. Pools are created and warmed up once, outside the timing:

* ``SandboxPool fresh`` — a new child per task (``spawn``), no namespaces
  (``flags=0``) and with user+pid namespaces;
* ``SandboxPool warm`` — ``fresh=False``: ``--size`` long-lived workers;
* ``ProcessPoolExecutor`` — ``concurrent.futures`` (fork), no isolation,
  through ``loop.run_in_executor``.

Targets (issue #7, 2-core machine): fresh >= 800 tasks/s; warm >= 0.5x
ProcessPoolExecutor.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiospaces import CLONE_NEWPID, CLONE_NEWUSER
from aiospaces.pool import SandboxPool


def identity(x: int) -> int:
    return x


Runner = Callable[[int], Awaitable[None]]


def pool_runner(pool: SandboxPool, fn: Callable[[int], int] | None = None) -> Runner:
    task = fn or identity

    async def run(n: int) -> None:
        out = [x async for x in pool.map(task, range(n))]
        assert out[-1] == n - 1

    return run


def executor_runner(ex: concurrent.futures.Executor) -> Runner:
    async def run(n: int) -> None:
        loop = asyncio.get_running_loop()
        out = await asyncio.gather(*(loop.run_in_executor(ex, identity, i) for i in range(n)))
        assert out[-1] == n - 1

    return run


async def bench(args: argparse.Namespace) -> int:
    size = args.size
    ppe = concurrent.futures.ProcessPoolExecutor(
        size, mp_context=multiprocessing.get_context("fork")
    )
    pools = {
        "SandboxPool fresh (flags=0)": SandboxPool(size),
        "SandboxPool fresh (user+pid)": SandboxPool(
            size, flags=CLONE_NEWUSER | CLONE_NEWPID, map_zero=True
        ),
        "SandboxPool warm (flags=0)": SandboxPool(size, fresh=False),
        "SandboxPool warm (user+pid)": SandboxPool(
            size, fresh=False, flags=CLONE_NEWUSER | CLONE_NEWPID, map_zero=True
        ),
    }
    runners: dict[str, Runner] = {name: pool_runner(p) for name, p in pools.items()}
    runners["ProcessPoolExecutor (fork)"] = executor_runner(ppe)
    rates: dict[str, list[float]] = {name: [] for name in runners}
    try:
        for name, run in runners.items():  # warm up: start workers, fault pages in
            n = args.tasks // 10 if "fresh" in name else args.tasks // 2
            await run(max(n, size))
        for _ in range(args.rounds):
            for name, run in runners.items():
                n = args.tasks
                t0 = time.perf_counter()
                await run(n)
                rates[name].append(n / (time.perf_counter() - t0))
    finally:
        for p in pools.values():
            await p.aclose()
        ppe.shutdown()

    load = os.getloadavg()
    print(f"{args.tasks} trivial tasks x {args.rounds} rounds, size {size}, "
          f"{os.cpu_count()} CPUs, loop {type(asyncio.get_running_loop()).__module__}, "
          f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")  # fmt: skip
    ppe_rate = statistics.median(rates["ProcessPoolExecutor (fork)"])
    print(f"{'candidate':<30} {'median tasks/s':>15} {'min':>9} {'max':>9} {'vs PPE':>7}")
    for name, values in rates.items():
        med = statistics.median(values)
        print(f"{name:<30} {med:>15.0f} {min(values):>9.0f} {max(values):>9.0f} "
              f"{med / ppe_rate:>6.2f}x")  # fmt: skip
    fresh = statistics.median(rates["SandboxPool fresh (flags=0)"])
    warm = statistics.median(rates["SandboxPool warm (flags=0)"])
    print()
    print(f"target fresh >= 800 tasks/s: {fresh:.0f} -> {'met' if fresh >= 800 else 'NOT met'}")
    ratio = warm / ppe_rate
    print(f"target warm >= 0.5x PPE:     {ratio:.2f}x -> {'met' if ratio >= 0.5 else 'NOT met'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--uvloop", action="store_true")
    args = parser.parse_args(argv)
    if args.uvloop:
        import uvloop

        return uvloop.run(bench(args))
    return asyncio.run(bench(args))


if __name__ == "__main__":
    sys.exit(main())
