"""Run programs in fresh namespaces with aiospaces' exec mode.

    python examples/run_isolated.py [PROGRAM ARGS...]

Works unprivileged (a user namespace maps you to root inside). Shows:
the program as PID 2 under aiospaces' init, a hostname of its own, a
timeout that takes the whole sandbox down, and output capped by max_output.
"""

from __future__ import annotations

import asyncio
import sys

from aiospaces import CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWUSER, CLONE_NEWUTS
from aiospaces._process import RunTimeout, run

FLAGS = CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWUTS


async def main(argv: list[str]) -> int:
    if argv:  # run what was asked, streaming to our terminal
        done = await run(argv, FLAGS, map_zero=True)
        return done.returncode

    script = "hostname sandbox; echo pid=$$ uid=$(id -u) host=$(hostname)"
    done = await run(["sh", "-c", script], FLAGS, map_zero=True, capture_output=True, check=True)
    print("inside:", done.stdout.decode().strip())

    try:
        await run(
            ["sh", "-c", "echo working; sleep 60 & sleep 60"],
            FLAGS,
            map_zero=True,
            capture_output=True,
            timeout=0.5,
        )
    except RunTimeout as exc:
        print(f"timed out after {exc.timeout}s; output so far: {exc.stdout!r}")

    done = await run(
        ["head", "-c", "10000000", "/dev/zero"],
        FLAGS,
        map_zero=True,
        capture_output=True,
        max_output=20,
    )
    print(f"kept {len(done.stdout)} bytes, truncated={done.stdout_truncated}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
