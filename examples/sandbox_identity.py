"""Hostname, ids and environment of a sandbox (unprivileged).

python examples/sandbox_identity.py
"""

from __future__ import annotations

import asyncio
import os
import socket

from aiospaces import spawn
from aiospaces.sandbox import Sandbox

SANDBOX = Sandbox(
    namespaces={"user"},  # map_zero is the default: your uid is 0 inside
    hostname="box",
    domainname="example.test",
    uid=0,
    gid=0,
    env={"GREETING": "hello"},
    clear_env=True,
)


def inside() -> tuple[str, int, dict[str, str]]:
    return socket.gethostname(), os.getuid(), dict(os.environ)


async def main() -> None:
    child = await spawn(inside, sandbox=SANDBOX)
    hostname, uid, env = await child.result()
    print(f"inside: hostname={hostname} uid={uid} env={env}")
    print(f"host:   hostname={socket.gethostname()} uid={os.getuid()}")


if __name__ == "__main__":
    asyncio.run(main())
