"""Run code you do not trust: Sandbox.untrusted() and a JSON result (unprivileged).

python examples/limits_untrusted.py

Every fence at once (all namespaces, a read-only system view, a private
/tmp, no network, seccomp, Landlock, no capabilities, modest limits); see
docs/limits.md for each choice. The value comes back as JSON: nothing the
sandboxed code sends is unpickled.
"""

from __future__ import annotations

import asyncio
import os
import socket

from aiospaces import ChildKilled, Sandbox, spawn


def untrusted_work() -> dict[str, object]:
    seen: dict[str, object] = {
        "uid": os.getuid(),
        "pid": os.getpid(),
        "root": sorted(os.listdir("/")),
    }
    try:
        socket.create_connection(("1.1.1.1", 53), timeout=1)
        seen["network"] = "reachable"
    except OSError as exc:
        seen["network"] = f"blocked ({exc.strerror})"
    return seen


def runaway() -> None:
    while True:
        pass


async def main() -> None:
    sb = Sandbox.untrusted(timeout=2)
    child = await spawn(untrusted_work, sandbox=sb, result_format="json")
    print("inside:", await child.result())

    child = await spawn(runaway, sandbox=sb)
    try:
        await child.result()
    except TimeoutError as exc:
        print("runaway:", exc)
    except ChildKilled as exc:  # pragma: no cover - e.g. a CPU limit first
        print("runaway:", exc.reason)


if __name__ == "__main__":
    asyncio.run(main())
