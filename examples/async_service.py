"""A JSON-lines "run my code" service: each request runs in its own sandbox.

    python examples/async_service.py [--port 0] [--size 4] [--timeout 2]

Listens on 127.0.0.1 (``--port 0`` picks a free port; the first line printed
is ``listening on HOST:PORT``). Each request is one JSON line::

    {"id": 1, "code": "print(6 * 7)"}

and gets one JSON line back::

    {"id": 1, "status": "ok", "returncode": 0, "stdout": "42\\n", "stderr": ""}

``status`` is ``ok``, ``error`` (non-zero exit: the traceback is in
``stderr``), ``timeout`` (the sandbox was killed after ``--timeout``
seconds), ``killed`` (died by a signal) or ``bad-request``.

The code runs as ``python -I -S -c CODE`` inside a fresh sandbox from a
``SandboxPool``: new user, pid, mount, network (nothing up), ipc and uts
namespaces, the host's root read-only with an empty ``/etc`` and ``/tmp``,
and an address-space limit (the Sandbox's ``rlimits``). The interpreter cannot see the
service's processes (pid namespace), cannot reach the network, cannot
read ``/etc/shadow`` (not there), and has its own session, so
``kill(0, SIGKILL)`` ends only its own sandbox. At most ``--size``
requests run at once; the rest wait (backpressure), connections stay
responsive.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys

from aiospaces import Bind, ChildFailed, Proc, Sandbox, Tmpfs
from aiospaces.pool import SandboxPool

MAX_OUTPUT = 4096
MAX_REQUEST = 64 * 1024
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


def run_code(code: str) -> tuple[int, str, str]:
    """In the sandbox: run ``code`` in a fresh interpreter; plain data back."""
    proc = subprocess.run(
        [PYTHON, "-I", "-S", "-c", code],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        check=False,
    )
    out = proc.stdout[:MAX_OUTPUT].decode(errors="replace")
    err = proc.stderr[-MAX_OUTPUT:].decode(errors="replace")
    return proc.returncode, out, err


async def answer(pool: SandboxPool, line: bytes, limit: float) -> dict[str, object]:
    try:
        request = json.loads(line)
        rid, code = request.get("id"), request["code"]
        if not isinstance(code, str):
            raise TypeError("code must be a string")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        return {"id": None, "status": "bad-request", "error": str(exc)}
    try:
        # Only plain types may come back: check before trusting them.
        rc, out, err = await pool.run(run_code, code, timeout=limit)
        if not (isinstance(rc, int) and isinstance(out, str) and isinstance(err, str)):
            raise TypeError("the sandbox answered with something unexpected")
    except TimeoutError:
        return {"id": rid, "status": "timeout", "error": f"killed after {limit:g}s"}
    except ChildFailed as exc:
        return {"id": rid, "status": "killed", "error": str(exc)}
    status = "ok" if rc == 0 else ("killed" if rc < 0 else "error")
    return {"id": rid, "status": status, "returncode": rc, "stdout": out, "stderr": err}


async def handle(
    pool: SandboxPool, limit: float, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    lock = asyncio.Lock()  # one writer per connection; requests run concurrently
    pending: set[asyncio.Task[None]] = set()

    async def serve(line: bytes) -> None:
        reply = await answer(pool, line, limit)
        async with lock:
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()

    try:
        while line := await reader.readline():
            if len(line) > MAX_REQUEST:
                break
            task = asyncio.ensure_future(serve(line))
            pending.add(task)
            task.add_done_callback(pending.discard)
        if pending:
            await asyncio.wait(pending)
    except (ConnectionError, asyncio.LimitOverrunError, ValueError):
        pass
    finally:
        for task in pending:
            task.cancel()
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--size", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=2.0)
    args = parser.parse_args(argv)

    # SIGTERM: stop serving, kill and reap the sandboxes still running, exit 0.
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    async with SandboxPool(args.size, sandbox=SANDBOX) as pool:
        server = await asyncio.start_server(
            lambda r, w: handle(pool, args.timeout, r, w), "127.0.0.1", args.port,
            limit=MAX_REQUEST + 1,
        )  # fmt: skip
        host, port = server.sockets[0].getsockname()[:2]
        print(f"listening on {host}:{port}", flush=True)
        async with server:
            with contextlib.suppress(asyncio.CancelledError):
                await server.serve_forever()
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(asyncio.run(main()))
