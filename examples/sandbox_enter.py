"""Enter a running sandbox's namespaces, like nsenter (unprivileged).

python examples/sandbox_enter.py
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket

from aiospaces import spawn
from aiospaces.sandbox import Bind, Proc, Sandbox, Tmpfs

FIRST = Sandbox(
    namespaces={"user", "pid"},
    hostname="first",
    mounts=(Bind("/", readonly=True), Tmpfs("/tmp"), Proc()),
    network="loopback",
)


def serve() -> None:
    with open("/tmp/note", "w") as f:
        f.write("left by the first sandbox")
    signal.pause()


def look() -> str:
    with open("/tmp/note") as f:
        note = f.read()
    pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
    return f"hostname={socket.gethostname()} note={note!r} my pid={os.getpid()} pids={pids}"


async def main() -> None:
    async with await spawn(serve, sandbox=FIRST) as first:
        await asyncio.sleep(0.2)  # let it write its note
        # Join every namespace in which the first differs from us (user, pid, mnt, net, uts).
        second = await spawn(look, sandbox=Sandbox(enter=first))
        print(await second.result())
        # Or only some of them:
        only_uts = Sandbox(enter=first, join={"user", "uts"})
        print(await (await spawn(socket.gethostname, sandbox=only_uts)).result())


if __name__ == "__main__":
    asyncio.run(main())
