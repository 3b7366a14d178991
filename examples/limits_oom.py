"""Memory, pids and CPU limits through cgroups, and how an OOM death is reported.

sudo python examples/limits_oom.py     # or inside a delegated cgroup v2 subtree:
systemd-run --user --scope -p Delegate=yes python examples/limits_oom.py

Without a cgroup that can enforce the limits, the spawn fails with a
CgroupUnavailable error whose hint says how to get one.
"""

from __future__ import annotations

import asyncio
import os
import signal

from aiospaces import ChildKilled, Sandbox, cgroups, spawn


def hog() -> int:
    chunks = [bytearray(16 << 20) for _ in range(64)]  # 1 GiB, touched
    return len(chunks)


def fork_bomb() -> int:
    made = 0
    try:
        while True:
            if os.fork() == 0:
                signal.pause()
                os._exit(0)
            made += 1
    except BlockingIOError:
        return made


async def main() -> None:
    print("cgroups here:", cgroups.available().describe())
    try:
        sb = Sandbox(namespaces={"user", "pid"}, memory_max="128M", memory_swap_max=0)
        child = await spawn(hog, sandbox=sb)
    except cgroups.CgroupUnavailable as exc:
        print(f"no cgroup limits here: {exc}\nhint: {exc.hint}")
        return
    try:
        await child.result()
    except ChildKilled as exc:
        print(f"hog: {exc.reason} (oom_killed={child.oom_killed})")

    child = await spawn(fork_bomb, sandbox=Sandbox(namespaces={"user", "pid"}, pids_max=32))
    print("fork bomb stopped after", await child.result(), "children; all cleaned up")


if __name__ == "__main__":
    asyncio.run(main())
