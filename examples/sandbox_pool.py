"""Run 100 untrusted Python snippets concurrently, one sandbox each.

    python examples/sandbox_pool.py [--count 100] [--size 8] [--timeout 2]

Each snippet gets a fresh sandbox from a ``SandboxPool``: new user, pid,
mount, network (no interfaces up), ipc and uts namespaces; the host's root
read-only with an empty ``/etc`` and ``/tmp`` on top. Inside it, a trusted
function of ours starts ``python -I -S -c SNIPPET`` and returns only plain
data (exit status and bounded output), so the snippet never writes the
result the parent unpickles.

Limits, with what aiospaces has today:

* time: the pool's per-task ``timeout`` kills the whole sandbox (the pid
  namespace takes every process in it down);
* memory: the Sandbox's ``rlimits={"AS": ...}`` (inherited by the
  interpreter); an allocation past it is a ``MemoryError``. (``memory_max``
  would add a cgroup limit with OOM accounting where cgroups are delegated);
* output: at most ``MAX_OUTPUT`` bytes per stream are kept.

Prints one line per snippet kind and a summary table (ok / error / timeout
/ killed, and time).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import subprocess
import sys
import time

from aiospaces import Bind, ChildFailed, Proc, Sandbox, Tmpfs
from aiospaces.pool import SandboxPool

MAX_OUTPUT = 4096
MEMORY = 256 << 20

# The interpreter itself, not a venv's link to it: the sandbox's /tmp is empty
# and a venv may live there. -I -S: no site, no user paths, no PYTHON* env.
PYTHON = os.path.realpath(sys.executable)

SANDBOX = Sandbox(
    namespaces={"user", "pid", "mnt", "net", "ipc", "uts"},
    hostname="sandbox",
    network="none",
    mounts=(Bind("/", readonly=True), Tmpfs("/etc"), Tmpfs("/tmp"), Proc()),
    rlimits={"AS": MEMORY},  # address space: an allocation past it is a MemoryError
)

# (kind, code): the mix a public "run my code" endpoint sees.
SNIPPETS = {
    "sum": "print(sum(range(10**5)))",
    "primes": "print([n for n in range(2, 200) if all(n % d for d in range(2, n))][-1])",
    "error": "1 / 0",
    "loop": "while True: pass",
    "sleep": "import time; time.sleep(3600)",
    "memory": "x = bytearray(2**33)",
    "segfault": "import ctypes; ctypes.string_at(0)",
    "shadow": "print(open('/etc/shadow').read())",
    "fork-bomb-ish": "import os\nfor _ in range(20):\n    os.fork() or os._exit(0)\nprint('ok')",
    "network": "import socket; socket.create_connection(('1.1.1.1', 53), timeout=1)",
}


def run_snippet(code: str) -> tuple[int, bytes, bytes]:
    """In the sandbox: run ``code`` in a fresh interpreter."""
    proc = subprocess.run(
        [PYTHON, "-I", "-S", "-c", code],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        check=False,
    )
    return proc.returncode, proc.stdout[-MAX_OUTPUT:], proc.stderr[-MAX_OUTPUT:]


async def one(pool: SandboxPool, kind: str, code: str, args: argparse.Namespace) -> tuple[str, str, float, str]:  # fmt: skip  # noqa: E501
    t0 = time.monotonic()
    try:
        rc, out, err = await pool.run(run_snippet, code, timeout=args.timeout)
    except TimeoutError:
        status, detail = "timeout", f"killed after {args.timeout:g}s"
    except ChildFailed as exc:  # the sandbox itself died
        status, detail = "killed", str(exc)
    else:
        if rc == 0:
            status, detail = "ok", out.decode(errors="replace").strip()[:40]
        elif rc < 0:
            status, detail = "killed", f"signal {-rc}"
        else:
            lines = err.decode(errors="replace").strip().splitlines()
            status, detail = "error", (lines[-1] if lines else f"status {rc}")[:60]
    return kind, status, time.monotonic() - t0, detail


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--size", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=2.0)
    args = parser.parse_args(argv)

    kinds = list(SNIPPETS)
    jobs = [kinds[i % len(kinds)] for i in range(args.count)]
    t0 = time.monotonic()
    async with SandboxPool(args.size, sandbox=SANDBOX) as pool:
        results = await asyncio.gather(*(one(pool, k, SNIPPETS[k], args) for k in jobs))
    wall = time.monotonic() - t0

    seen: dict[str, tuple[str, str]] = {}
    for kind, status, _t, detail in results:
        seen.setdefault(kind, (status, detail))
    print(f"{'snippet':<15} {'status':<8} detail")
    for kind, (status, detail) in seen.items():
        print(f"{kind:<15} {status:<8} {detail}")

    table: dict[str, list[float]] = collections.defaultdict(list)
    for _kind, status, t, _detail in results:
        table[status].append(t)
    print()
    print("times include the wait for a free sandbox")
    print(f"{'status':<8} {'count':>5} {'mean s':>8} {'max s':>8}")
    for status in ("ok", "error", "timeout", "killed"):
        times = table.get(status, [])
        mean = sum(times) / len(times) if times else 0.0
        print(f"{status:<8} {len(times):>5} {mean:>8.3f} {max(times, default=0.0):>8.3f}")
    print(f"{'total':<8} {len(results):>5} in {wall:.2f}s with {args.size} sandboxes at a time")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
