"""Scenario 5: SandboxPool throughput (fresh, warm) beside ProcessPoolExecutor.

The candidates and runners are those of ``benchmarks/pool_bench.py``; this
module runs them interleaved inside the suite and returns rows (median
tasks/s as ``extra["tasks_per_s"]``; ``median_ms`` is per task).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import multiprocessing
import statistics
import time

import aiospaces
from aiospaces import CLONE_NEWPID, CLONE_NEWUSER
from aiospaces.pool import SandboxPool

from . import _targets
from ._harness import Row
from .pool_bench import Runner, executor_runner, pool_runner

PPE = "ProcessPoolExecutor (fork)"
SPAWNER_HEAVY = "SandboxPool fresh via=spawner, fn module imports asyncio (flags=0)"


async def _measure(tasks: int, rounds: int, size: int = 8) -> dict[str, list[float]]:
    ppe = concurrent.futures.ProcessPoolExecutor(
        size, mp_context=multiprocessing.get_context("fork")
    )
    # One spawner for the lean task module, one for pool_bench's (it imports
    # asyncio): a spawner carries every module it ever imported, so a shared
    # one would make the lean candidates pay for the heavy module too.
    lean, heavy = aiospaces.Spawner(), aiospaces.Spawner()
    pools = {
        "SandboxPool fresh (flags=0)": SandboxPool(size, via="fork"),
        "SandboxPool fresh (user+pid)": SandboxPool(
            size, flags=CLONE_NEWUSER | CLONE_NEWPID, map_zero=True, via="fork"
        ),
        "SandboxPool fresh via=spawner (flags=0)": SandboxPool(size, spawner=lean),
        "SandboxPool fresh via=spawner (user+pid)": SandboxPool(
            size, flags=CLONE_NEWUSER | CLONE_NEWPID, map_zero=True, spawner=lean
        ),
        SPAWNER_HEAVY: SandboxPool(size, spawner=heavy),
        "SandboxPool warm (flags=0)": SandboxPool(size, fresh=False),
    }
    runners: dict[str, Runner] = {
        # The spawner imports the task's module: a lean one (see _targets),
        # but for SPAWNER_HEAVY (pool_bench, which imports asyncio).
        name: pool_runner(
            p, _targets.identity if "spawner" in name and name != SPAWNER_HEAVY else None
        )
        for name, p in pools.items()
    }
    runners[PPE] = executor_runner(ppe)
    rates: dict[str, list[float]] = {name: [] for name in runners}
    try:
        for run in runners.values():
            await run(max(size, tasks // 5))
        for _ in range(rounds):
            for name, run in runners.items():
                t0 = time.perf_counter()
                await run(tasks)
                rates[name].append(tasks / (time.perf_counter() - t0))
    finally:
        for p in pools.values():
            await p.aclose()
        await lean.aclose()
        await heavy.aclose()
        ppe.shutdown()
    return rates


def run(full: bool) -> list[Row]:
    rates = asyncio.run(_measure(1000 if full else 300, 5 if full else 3))
    ppe = statistics.median(rates[PPE])
    rows = []
    for name, values in rates.items():
        med = statistics.median(values)
        rows.append(
            Row(
                "pool throughput",
                "trivial tasks, size 8",
                name,
                len(values),
                1e3 / med,
                1e3 / min(values),
                med / ppe,
                extra={"tasks_per_s": med},
            )
        )
    return rows
