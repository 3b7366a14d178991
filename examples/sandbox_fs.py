"""A read-only view of the host with private /tmp, /proc and /dev (unprivileged).

python examples/sandbox_fs.py
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

from aiospaces import spawn
from aiospaces.sandbox import Bind, Dev, Proc, Sandbox, Tmpfs

NOTE = f"/tmp/aiospaces-example-{os.getpid()}"
SANDBOX = Sandbox(
    namespaces={"user", "pid"},  # "mnt" is implied by mounts
    mounts=(Bind("/", readonly=True), Tmpfs("/tmp", size="16m"), Proc(), Dev()),
)


def inside() -> str:
    try:
        open("/usr/evil", "w").close()
    except OSError as exc:
        print("write /usr:", exc.strerror)
    with open(NOTE, "w") as f:
        f.write("private")
    print(
        "processes:",
        subprocess.run(["ps", "-e"], capture_output=True, text=True, check=True).stdout,
    )
    return ", ".join(os.listdir("/tmp"))


async def main() -> None:
    child = await spawn(inside, sandbox=SANDBOX)
    print("the sandbox's /tmp held:", await child.result())
    print("and the host's /tmp has it:", Path(NOTE).exists())  # noqa: ASYNC240


if __name__ == "__main__":
    asyncio.run(main())
