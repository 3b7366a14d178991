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

from . import _targets
from ._harness import LagMeter, Row, pct, run_fresh


async def measure(rounds: int, via: str) -> dict[str, Any]:
    lat = []
    if via != "fork":  # start it outside the measured spawns (once per service)
        await aiospaces._spawner.default_spawner().start()
    with LagMeter() as lag:
        for _ in range(rounds):
            t0 = time.perf_counter()
            child = await aiospaces.spawn(
                _targets.noop, CLONE_NEWUSER | CLONE_NEWPID, map_zero=True, via=via
            )
            await child.result()
            lat.append(time.perf_counter() - t0)
            await asyncio.sleep(0.002)
    await aiospaces.stop_spawner()
    return {
        "median_ms": statistics.median(lat) * 1e3,
        "p90_ms": pct(lat, 0.9) * 1e3,
        **lag.summary(),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--via", choices=["auto", "fork", "spawner"], default="auto")
    a = ap.parse_args()
    ballast = bytearray(a.mib << 20)
    for i in range(0, len(ballast), 4096):  # touch every page: resident, not just mapped
        ballast[i] = 1
    result = asyncio.run(measure(a.rounds, a.via))
    result["mib"] = a.mib
    with open("/proc/self/status") as f:
        result["rss_mib"] = next(int(x.split()[1]) for x in f if x.startswith("VmRSS:")) / 1024
    print(json.dumps(result))


VIAS = ("auto", "fork", "spawner")


def run(sizes: list[int], rounds: int) -> list[Row]:
    """Each size with each ``via``; ratios are against the smallest size's
    run with the same ``via`` (auto: the small parent forks, the 1 GiB one
    goes through the spawner)."""
    rows = []
    base: dict[str, float] = {}
    for via, mib in ((v, m) for v in VIAS for m in sizes):
        data, why = run_fresh(
            "parent_size", "--mib", str(mib), "--rounds", str(rounds), "--via", via
        )
        name = f"aiospaces.spawn user+pid via={via}"
        if data is None:
            rows.append(Row("parent size", f"{mib} MiB", name, missing=why))
            continue
        base.setdefault(via, data["median_ms"])
        rows.append(
            Row(
                "parent size",
                f"{mib} MiB parent",
                name,
                rounds,
                data["median_ms"],
                data["p90_ms"],
                data["median_ms"] / base[via],
                extra=data,
            )
        )
    return rows


if __name__ == "__main__":
    main()
