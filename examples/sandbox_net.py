"""Network modes: loopback only, and (as root) a veth pair to the host.

python examples/sandbox_net.py          # loopback; as root also the veth
"""

from __future__ import annotations

import asyncio
import os
import socket
import time

from aiospaces import spawn
from aiospaces.sandbox import Sandbox, Veth


def interfaces() -> list[str]:
    return [name for _, name in socket.if_nameindex()]


def fetch(host: str, port: int) -> bytes:
    deadline = time.monotonic() + 5
    while True:  # the host's server starts once spawn() has returned
        try:
            with socket.create_connection((host, port), timeout=5) as s:
                return s.recv(100)
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


async def hello(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"hello through the veth")
    await writer.drain()
    writer.close()


async def main() -> None:
    loopback = Sandbox(namespaces={"user"}, network="loopback")
    print("loopback sandbox sees:", await (await spawn(interfaces, sandbox=loopback)).result())
    if os.geteuid() != 0:
        print("(run as root for the veth part)")
        return
    # 10.200.0.0/24 exists only on this pair, which is gone when the sandbox ends.
    veth = Sandbox(network=Veth("10.200.0.2/24", "10.200.0.1/24"))
    port = 8765
    async with await spawn(fetch, args=("10.200.0.1", port), sandbox=veth) as child:
        server = await asyncio.start_server(hello, "10.200.0.1", port)  # the pair exists now
        async with server:
            print("veth sandbox got:", await child.result())


if __name__ == "__main__":
    asyncio.run(main())
