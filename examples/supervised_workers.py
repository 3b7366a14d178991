"""A supervisor keeping three namespaced workers alive; one crashes now and then.

    python examples/supervised_workers.py [--duration 5]

Each worker runs in new user, pid and uts namespaces (PID 1, its own
hostname). ``flaky`` dies by SIGSEGV or exits with status 3 every
``--crash-every`` seconds and is restarted with exponential backoff;
``steady`` and ``ticker`` run until the end. After ``--duration`` seconds
the block is left: every worker gets SIGTERM and is reaped (``ticker``
ignores SIGTERM, so it is killed after its 0.5 s grace). The event stream
is printed as it happens, then the final status.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys
import time

from aiospaces import CLONE_NEWPID, CLONE_NEWUSER, CLONE_NEWUTS
from aiospaces.supervisor import Exited, Restarting, Started, Supervisor

FLAGS = CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWUTS


def steady(name: str) -> None:
    socket.sethostname(name)
    while True:
        time.sleep(1)


def ticker(name: str) -> None:
    socket.sethostname(name)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a worker that will not stop
    while True:
        time.sleep(0.2)


def flaky(name: str, crash_every: float) -> None:
    socket.sethostname(name)
    time.sleep(crash_every)
    if int(time.time() * 10) % 2:
        os._exit(3)
    signal.signal(signal.SIGSEGV, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGSEGV)  # PID 1 ignores this one...
    os._exit(128 + signal.SIGSEGV)  # ...so exit as a shell reports a signal death


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--crash-every", type=float, default=0.5)
    args = parser.parse_args(argv)

    t0 = time.monotonic()
    async with Supervisor(on_give_up="report") as sup:
        common = {"flags": FLAGS, "map_zero": True}
        await sup.start(steady, name="steady", args=("steady",), **common)
        await sup.start(ticker, name="ticker", args=("ticker",), stop_grace=0.5, **common)
        await sup.start(flaky, name="flaky", args=("flaky", args.crash_every),
                        max_restarts=50, within=60, backoff=(0.1, 2.0, 2.0), **common)  # fmt: skip

        async def show() -> None:
            async for event in sup.events():
                extra = ""
                if isinstance(event, Started):
                    extra = f"pid={event.pid} attempt={event.attempt}"
                elif isinstance(event, Exited):
                    extra = f"returncode={event.returncode}"
                elif isinstance(event, Restarting):
                    extra = f"attempt={event.attempt} delay={event.delay:.3f}s"
                kind = type(event).__name__
                print(
                    f"{event.monotonic - t0:7.3f}s  {event.name:<7} {kind:<10} {extra}", flush=True
                )

        printer = asyncio.ensure_future(show())
        await asyncio.sleep(args.duration)
        print("-- status --")
        for st in sup.status().values():
            up = f"{st.uptime:.1f}s" if st.uptime is not None else "-"
            print(f"{st.name:<7} {st.state:<8} pid={st.pid} restarts={st.restarts} "
                  f"last={st.returncode} up={up}")  # fmt: skip
        print("-- leaving the supervisor --", flush=True)
    await printer  # the stream ends once every worker is stopped and reaped
    print(f"done in {time.monotonic() - t0:.2f}s")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
