"""Run aiospaces' benchmark suite.

    pip install -e '.[bench]'          # pyspaces 1.4.1, uvloop, matplotlib
    apt-get install bubblewrap         # the bwrap peer (reported MISSING otherwise)
    python -m benchmarks --quick       # under a minute
    python -m benchmarks --full --docs # a few minutes; rewrites docs/benchmarks.md + chart

Results (markdown and JSON) go to benchmarks/results/. Every ratio compares
candidates measured side by side, interleaved, in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from . import concurrency, exec_spawn, fn_spawn, parent_size
from ._harness import Row, markdown

ROOT = Path(__file__).resolve().parent.parent


def _find(rows: list[Row], scenario: str, case: str, name_prefix: str) -> Row | None:
    for r in rows:
        if (
            r.scenario == scenario
            and r.case == case
            and r.name.startswith(name_prefix)
            and not r.missing
        ):
            return r
    return None


FN_VARIANTS = (
    ("via=fork", "aiospaces.spawn via=fork"),
    ("via=spawner, lean fn module", "aiospaces.spawn via=spawner, lean"),
    ("via=spawner, fn module imports asyncio", "aiospaces.spawn via=spawner, fn module"),
)


def targets(rows: list[Row]) -> list[tuple[str, str, str, bool | None]]:
    """(target, measured, issue, met) for every target the issues name."""
    out: list[tuple[str, str, str, bool | None]] = []

    def add(
        target: str,
        issue: str,
        value: float | None,
        limit: float,
        fmt: str,
        higher_is_better: bool = False,
    ) -> None:
        if value is None:
            out.append((target, "not measured", issue, None))
            return
        met = value >= limit if higher_is_better else value <= limit
        out.append((target, fmt.format(value), issue, met))

    py = _find(rows, "fn spawn-to-exit", "user+pid", "pyspaces")
    for label, prefix in FN_VARIANTS:
        sp = _find(rows, "fn spawn-to-exit", "user+pid", prefix)
        r = sp.ratio if sp else None
        add(f"fn spawn user+pid ≤ 1.5x fork floor ({label})", "#3", r, 1.5, "{:.2f}x")
        add(f"fn spawn user+pid ≤ 1.3x fork floor ({label})", "#9", r, 1.3, "{:.2f}x")
        add(
            f"fn spawn ≥ 1.5x faster than pyspaces ({label})",
            "#3, #9",
            (py.median_ms / sp.median_ms) if sp and py else None,
            1.5,
            "{:.2f}x faster",
            higher_is_better=True,
        )
    run_ = _find(rows, "exec spawn-to-exit", "user+pid+mnt+uts+ipc", "aiospaces.run (with init)")
    uns = _find(rows, "exec spawn-to-exit", "user+pid+mnt+uts+ipc", "unshare")
    bw = _find(rows, "exec spawn-to-exit", "user+pid+mnt+uts+ipc", "bwrap")
    r_u = run_.median_ms / uns.median_ms if run_ and uns else None
    r_b = run_.median_ms / bw.median_ms if run_ and bw else None
    add("exec run ≤ 1.0x unshare", "#4", r_u, 1.0, "{:.2f}x")
    add("exec run ≤ 0.7x bwrap", "#4", r_b, 0.7, "{:.2f}x")
    add("exec run ≤ 0.6x unshare", "#9", r_u, 0.6, "{:.2f}x")
    add("exec run ≤ 0.4x bwrap", "#9", r_b, 0.4, "{:.2f}x")
    for n, limit, issue in ((1000, 10.0, "#3"), (5000, 20.0, "#9")):
        for name in (f"{lp} via={v}" for v in ("fork", "spawner") for lp in ("asyncio", "uvloop")):
            r = _find(rows, "concurrency", f"{n} children", name)
            add(
                f"{n} children ({name}): loop lag p99 ≤ {limit:g} ms",
                issue,
                r.extra["lag_p99_ms"] if r else None,
                limit,
                "{:.1f} ms",
            )
            if n == 5000:
                add(
                    f"5000 children ({name}): no thread beyond main",
                    "#9",
                    r.extra["threads_max"] if r else None,
                    1,
                    "{:.0f} thread(s)",
                )
                add(
                    f"5000 children ({name}): parent memory/child ≤ 16 KiB",
                    "#9",
                    r.extra["parent_rss_kib_per_child"] if r else None,
                    16,
                    "{:.1f} KiB",
                )
    for via in ("auto", "fork", "spawner"):
        big = next(
            (
                r
                for r in rows
                if r.scenario == "parent size"
                and r.case.startswith("1024")
                and r.name.endswith(f"via={via}")
                and not r.missing
            ),
            None,
        )
        add(
            f"1 GiB parent: spawn ≤ 1.5x a 50 MiB parent (via={via})",
            "#9",
            big.ratio if big else None,
            1.5,
            "{:.2f}x",
        )
        add(
            f"1 GiB parent: no spawn blocks the loop > 5 ms (via={via})",
            "#9",
            big.extra["lag_max_ms"] if big else None,
            5,
            "{:.1f} ms",
        )
    for via, label in (
        ("via=fork", "SandboxPool fresh (flags=0)"),
        ("via=spawner, lean fn module", "SandboxPool fresh via=spawner (flags=0)"),
        (
            "via=spawner, fn module imports asyncio",
            "SandboxPool fresh via=spawner, fn module imports asyncio",
        ),
    ):
        fresh = _find(rows, "pool throughput", "trivial tasks, size 8", label)
        add(
            f"pool fresh ≥ 800 tasks/s ({via})",
            "#7",
            fresh.extra["tasks_per_s"] if fresh else None,
            800,
            "{:.0f} tasks/s",
            higher_is_better=True,
        )
    warm = _find(rows, "pool throughput", "trivial tasks, size 8", "SandboxPool warm (flags=0)")
    add(
        "pool warm ≥ 0.5x ProcessPoolExecutor",
        "#7",
        warm.ratio if warm else None,
        0.5,
        "{:.2f}x",
        higher_is_better=True,
    )
    return out


def machine() -> dict[str, Any]:
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "uid": os.geteuid(),
    }


def render(
    rows: list[Row], tg: list[tuple[str, str, str, bool | None]], info: dict[str, Any]
) -> str:
    lines = [
        f"Machine: Linux {info['kernel']}, {info['cpus']} CPUs, {info['mem_gib']} GiB, "
        f"Python {info['python']}, euid {info['uid']}; {info['date']}.",
        "",
        "## Targets",
        "",
        "| target | issue | measured | met |",
        "|---|---|---|---|",
    ]
    for t, measured, issue, met in tg:
        lines.append(
            f"| {t} | {issue} | {measured} | {'yes' if met else ('no' if met is False else '-')} |"
        )
    lines += ["", "## All measurements", "", markdown(rows)]
    extra = [r for r in rows if r.extra]
    if extra:
        lines += ["", "## Details", ""]
        for r in extra:
            lines.append(
                f"- {r.scenario} / {r.case} / {r.name}: "
                + ", ".join(
                    f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in r.extra.items()
                )
            )
    return "\n".join(lines) + "\n"


def chart(rows: list[Row], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no chart (pip install -e '.[bench]')", file=sys.stderr)
        return False
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    fn = [r for r in rows if r.scenario == "fn spawn-to-exit" and not r.missing]
    cases = list(dict.fromkeys(r.case for r in fn))
    names = list(dict.fromkeys(r.name for r in fn))
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        xs, ys = [], []
        for j, case in enumerate(cases):
            r = next((r for r in fn if r.case == case and r.name == name), None)
            if r:
                xs.append(j + i * width)
                ys.append(r.median_ms)
        ax1.bar(xs, ys, width, label=name)
    ax1.set_xticks([j + 0.4 - width / 2 for j in range(len(cases))], cases, fontsize=8)
    ax1.set_ylabel("median spawn-to-exit (ms)")
    ax1.set_title("fn spawn latency per namespace set")
    ax1.legend(fontsize=7)
    conc = [r for r in rows if r.scenario == "concurrency" and not r.missing]
    for loop in (f"{lp} via={v}" for v in ("fork", "spawner") for lp in ("asyncio", "uvloop")):
        pts = sorted((r.extra["n"], r.extra["lag_p99_ms"]) for r in conc if r.name == loop)
        if pts:
            ax2.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{loop} p99")
        pts = sorted((r.extra["n"], r.extra["lag_max_ms"]) for r in conc if r.name == loop)
        if pts:
            ax2.plot(
                [p[0] for p in pts],
                [p[1] for p in pts],
                marker="x",
                linestyle="--",
                label=f"{loop} max",
            )
    ax2.set_xlabel("concurrent children")
    ax2.set_ylabel("1 ms heartbeat overshoot (ms)")
    ax2.set_title("event-loop lag while children start")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


async def _async_part(rounds: int, exec_rounds: int) -> list[Row]:
    rows = await fn_spawn.run(rounds)
    rows += await exec_spawn.run(exec_rounds)
    return rows


def write_docs(rows: list[Row], text: str) -> None:
    """docs/benchmarks.md (the head text, the chart, the report) and the chart."""
    docs = ROOT / "docs"
    docs.mkdir(exist_ok=True)
    has_chart = chart(rows, docs / "benchmarks.png")
    head = (
        (ROOT / "docs" / "benchmarks.head.md").read_text()
        if (docs / "benchmarks.head.md").exists()
        else "# Benchmarks\n\n"
    )
    body = head + ("![latency and loop lag](benchmarks.png)\n\n" if has_chart else "") + text
    (docs / "benchmarks.md").write_text(body)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="under a minute (default)")
    mode.add_argument(
        "--full", action="store_true", help="a few minutes: 1,000 and 5,000 children, 1 GiB parent"
    )
    ap.add_argument(
        "--docs", action="store_true", help="rewrite docs/benchmarks.md and docs/benchmarks.png"
    )
    ap.add_argument(
        "--from-json", metavar="FILE", help="measure nothing: report (and --docs) a saved run"
    )
    a = ap.parse_args(argv)
    if a.from_json:
        saved = json.loads(Path(a.from_json).read_text())
        rows = [Row(**r) for r in saved["rows"]]
        info = saved["machine"]
        text = render(rows, targets(rows), info)
        print(text)
        if a.docs:
            write_docs(rows, text)
        return 0
    full = a.full
    rounds = 200 if full else 40
    rows = asyncio.run(_async_part(rounds, rounds))
    rows += concurrency.run([1000, 5000] if full else [300], ["asyncio", "uvloop"])
    rows += parent_size.run([50, 1024] if full else [50, 512], 40 if full else 15)
    try:
        from . import pool_throughput

        rows += pool_throughput.run(full)
    except ImportError:
        rows.append(
            Row(
                "pool throughput",
                "trivial tasks",
                "SandboxPool",
                missing="pool not available in this checkout",
            )
        )
    info = machine()
    tg = targets(rows)
    text = render(rows, tg, info)
    print(text)
    out = ROOT / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    stamp = info["date"].replace(":", "")
    (out / f"{stamp}.md").write_text(text)
    (out / f"{stamp}.json").write_text(
        json.dumps(
            {"machine": info, "rows": [asdict(r) for r in rows], "targets": tg},
            indent=1,
            default=str,
        )
    )
    if a.docs:
        write_docs(rows, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
