"""Interleaved measurement, statistics and reports shared by the scenarios.

Candidates run A B C A B C ... so that load from elsewhere on the machine hits
all of them alike; every ratio is against a floor measured in the same run.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

Op = Callable[[], Awaitable[None]]


@dataclass
class Candidate:
    name: str
    op: Op | None  # None: missing peer
    missing: str = ""
    floor: bool = False


@dataclass
class Row:
    scenario: str
    case: str
    name: str
    n: int = 0
    median_ms: float = float("nan")
    p90_ms: float = float("nan")
    ratio: float = float("nan")
    missing: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def run_fresh(module: str, *args: str) -> tuple[dict[str, Any] | None, str]:
    """Run ``python -m benchmarks.<module> ARGS`` in a fresh interpreter.

    Returns ``(the JSON object it printed last, "")`` or ``(None, why it failed)``.
    """
    out = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{module}", *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    if out.returncode != 0:
        return None, out.stderr.strip()[-300:]
    return json.loads(out.stdout.strip().splitlines()[-1]), ""


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def interleave(
    scenario: str, case: str, candidates: list[Candidate], rounds: int, warmup: int = 5
) -> list[Row]:
    """Run each present candidate ``rounds`` times, interleaved; one Row each."""
    present = [c for c in candidates if c.op is not None]
    samples: dict[str, list[float]] = {c.name: [] for c in present}
    for i in range(warmup + rounds):
        for c in present:
            assert c.op is not None
            t0 = time.perf_counter()
            await c.op()
            dt = time.perf_counter() - t0
            if i >= warmup:
                samples[c.name].append(dt)
    floor = next((c for c in present if c.floor), None)
    floor_med = statistics.median(samples[floor.name]) if floor else float("nan")
    rows = []
    for c in candidates:
        if c.op is None:
            rows.append(Row(scenario, case, c.name, missing=c.missing or "missing"))
            continue
        s = samples[c.name]
        med = statistics.median(s)
        rows.append(
            Row(
                scenario,
                case,
                c.name,
                len(s),
                med * 1e3,
                pct(s, 0.9) * 1e3,
                med / floor_med if floor else float("nan"),
            )
        )
    return rows


def markdown(rows: list[Row]) -> str:
    out = [
        "| scenario | case | candidate | n | median ms | p90 ms | ratio to floor |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.missing:
            out.append(f"| {r.scenario} | {r.case} | {r.name} | - | MISSING: {r.missing} | | |")
            continue
        ratio = "" if r.ratio != r.ratio else f"{r.ratio:.2f}x"
        cells = (r.scenario, r.case, r.name, r.n, f"{r.median_ms:.3f}", f"{r.p90_ms:.3f}", ratio)
        out.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(out)


class LagMeter:
    """Overshoot of a 1 ms heartbeat: how long the loop was kept from running."""

    def __init__(self, period: float = 0.001) -> None:
        self.period = period
        self.overshoots: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _beat(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t0 = loop.time()
            await asyncio.sleep(self.period)
            self.overshoots.append(max(0.0, loop.time() - t0 - self.period))

    def __enter__(self) -> LagMeter:
        self._task = asyncio.get_running_loop().create_task(self._beat())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()

    def summary(self) -> dict[str, float]:
        s = self.overshoots or [0.0]
        return {
            "lag_p50_ms": statistics.median(s) * 1e3,
            "lag_p99_ms": pct(s, 0.99) * 1e3,
            "lag_max_ms": max(s) * 1e3,
            "beats": float(len(self.overshoots)),
        }


def run_on(loop: str, coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on a fresh ``"asyncio"`` or ``"uvloop"`` loop."""
    if loop == "uvloop":
        import uvloop

        return uvloop.run(coro)
    return asyncio.run(coro)
