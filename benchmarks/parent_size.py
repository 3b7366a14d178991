"""Scenario 4: spawn latency from a large parent vs a small one.

A fork copies the parent's page tables, so a parent with 1 GiB resident
forks far slower than a small one — and the event loop is blocked while it
does. Each size runs in a fresh interpreter that first touches a ballast.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

import aiospaces
from aiospaces import CLONE_NEWPID, CLONE_NEWUSER

from ._harness import LagMeter, Row, pct, run_fresh


def _noop() -> None:
    pass


async def measure(rounds: int) -> dict[str, Any]:
    lat = []
    with LagMeter() as lag:
        for _ in range(rounds):
            t0 = time.perf_counter()
            child = await aiospaces.spawn(_noop, CLONE_NEWUSER | CLONE_NEWPID, map_zero=True)
            await child.result()
            lat.append(time.perf_counter() - t0)
            await asyncio.sleep(0.002)
    return {
        "median_ms": statistics.median(lat) * 1e3,
        "p90_ms": pct(lat, 0.9) * 1e3,
        **lag.summary(),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=30)
    a = ap.parse_args()
    ballast = bytearray(a.mib << 20)
    for i in range(0, len(ballast), 4096):  # touch every page: resident, not just mapped
        ballast[i] = 1
    result = asyncio.run(measure(a.rounds))
    result["mib"] = a.mib
    with open("/proc/self/status") as f:
        result["rss_mib"] = next(int(x.split()[1]) for x in f if x.startswith("VmRSS:")) / 1024
    print(json.dumps(result))


def run(sizes: list[int], rounds: int) -> list[Row]:
    rows = []
    base = None
    for mib in sizes:
        data, why = run_fresh("parent_size", "--mib", str(mib), "--rounds", str(rounds))
        if data is None:
            rows.append(Row("parent size", f"{mib} MiB", "aiospaces.spawn", missing=why))
            continue
        if base is None:
            base = data["median_ms"]
        rows.append(
            Row(
                "parent size",
                f"{mib} MiB parent",
                "aiospaces.spawn user+pid",
                rounds,
                data["median_ms"],
                data["p90_ms"],
                data["median_ms"] / base,
                extra=data,
            )
        )
    return rows


if __name__ == "__main__":
    main()
