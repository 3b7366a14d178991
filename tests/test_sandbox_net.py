"""Sandbox networking: none, loopback, host, and (as root) a veth pair.

Traffic stays on this machine: loopback, and 10.200.x.y only on the veth
pair a test creates.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import time
from collections.abc import AsyncIterator

import pytest

from aiospaces import spawn
from aiospaces.sandbox import Sandbox, Veth


async def _serve(host: str) -> tuple[asyncio.Server, int]:
    async def reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hello from the host")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(reply, host, 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.fixture
async def host_server() -> AsyncIterator[int]:
    server, port = await _serve("127.0.0.1")
    try:
        yield port
    finally:
        server.close()
        await server.wait_closed()


def _connect(host: str, port: int) -> object:
    try:
        with socket.create_connection((host, port), timeout=2) as s:
            return s.recv(100)
    except OSError as exc:
        return exc.errno


def _loopback_self_test() -> object:
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        with socket.create_connection(srv.getsockname(), timeout=2) as c:
            conn, _ = srv.accept()
            with conn:
                conn.sendall(b"ping")
                return c.recv(4)


@pytest.mark.userns
async def test_host_network_reaches_the_host_loopback(host_server: int) -> None:
    sb = Sandbox(namespaces={"user"}, network="host")
    got = await (await spawn(_connect, args=("127.0.0.1", host_server), sandbox=sb)).result()
    assert got == b"hello from the host"


@pytest.mark.userns
async def test_loopback_sandbox_cannot_reach_the_host(host_server: int) -> None:
    sb = Sandbox(namespaces={"user"}, network="loopback")
    got = await (await spawn(_connect, args=("127.0.0.1", host_server), sandbox=sb)).result()
    assert got == errno.ECONNREFUSED  # its own loopback: nothing listens there
    assert await (await spawn(_loopback_self_test, sandbox=sb)).result() == b"ping"


@pytest.mark.userns
async def test_none_sandbox_has_no_network(host_server: int) -> None:
    sb = Sandbox(namespaces={"user"}, network="none")
    got = await (await spawn(_connect, args=("127.0.0.1", host_server), sandbox=sb)).result()
    assert got == errno.ENETUNREACH
    names = await (await spawn(socket.if_nameindex, sandbox=sb)).result()
    assert [n for _, n in names] == ["lo"]


def _host_link_exists(name: str) -> bool:
    return os.path.exists(f"/sys/class/net/{name}")


@pytest.mark.root
async def test_veth_reaches_a_server_on_the_peer_address() -> None:
    host_if = f"asptest{os.getpid() % 10000}"
    veth = Veth("10.200.77.2/24", "10.200.77.1/24", host_ifname=host_if, default_route=True)

    def inside(port: int) -> tuple[object, list[str], list[list[str]]]:
        with open("/proc/net/route") as f:
            routes = [line.split()[:3] for line in f.readlines()[1:]]
        deadline = time.monotonic() + 5
        while True:  # the test's server starts once spawn() returned
            got = _connect("10.200.77.1", port)
            if got != errno.ECONNREFUSED or time.monotonic() > deadline:
                return got, sorted(n for _, n in socket.if_nameindex()), routes
            time.sleep(0.05)

    # The port is fixed before the host address exists: reserve one on loopback.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    child = await spawn(inside, args=(port,), sandbox=Sandbox(network=veth))
    try:
        assert _host_link_exists(host_if)
        server = await asyncio.start_server(_reply, "10.200.77.1", port)
        try:
            got, names, routes = await child.result()
        finally:
            server.close()
            await server.wait_closed()
    finally:
        await child.__aexit__(None, None, None)
    assert got == b"hello from the host"
    assert names == ["eth0", "lo"]
    # Iface, destination, gateway (little-endian hex): default via 10.200.77.1.
    assert ["eth0", "00000000", "014DC80A"] in routes
    # The pair dies with the sandbox's network namespace (asynchronously).
    deadline = time.monotonic() + 10
    while _host_link_exists(host_if) and time.monotonic() < deadline:  # noqa: ASYNC110 - polls the kernel
        await asyncio.sleep(0.05)
    assert not _host_link_exists(host_if)


async def _reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"hello from the host")
    await writer.drain()
    writer.close()


@pytest.mark.root
async def test_veth_failure_is_a_spawn_error_and_leaves_nothing() -> None:
    from aiospaces import SpawnError

    # "lo" exists already: the parent-side step fails with EEXIST.
    sb = Sandbox(network=Veth("10.200.78.2/24", "10.200.78.1/24", host_ifname="lo"))
    with pytest.raises(SpawnError) as info:
        await spawn(os.getpid, sandbox=sb)
    assert info.value.step == "veth lo"
    assert info.value.errno == errno.EEXIST
