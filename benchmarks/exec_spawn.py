"""Scenario 2: exec spawn-to-exit of /bin/true beside unshare(1) and bwrap(1)."""

from __future__ import annotations

import asyncio
import shutil

from aiospaces import CLONE_NEWIPC, CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWUSER, CLONE_NEWUTS

from ._harness import Candidate, Row, interleave

FLAGS = CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC


async def _exec(*argv: str) -> None:
    proc = await asyncio.create_subprocess_exec(*argv)
    assert await proc.wait() == 0, argv


def _program(name: str, argv: list[str], hint: str) -> Candidate:
    if shutil.which(argv[0]) is None:
        return Candidate(name, None, f"{argv[0]} not installed ({hint})")

    async def op() -> None:
        await _exec(*argv)

    return Candidate(name, op)


def _aiospaces(as_pid_1: bool) -> Candidate:
    name = "aiospaces.run" + (" as_pid_1" if as_pid_1 else " (with init)")
    try:
        from aiospaces._process import run
    except ImportError:
        return Candidate(name, None, "exec mode not available in this checkout")

    async def op() -> None:
        done = await run(["/bin/true"], FLAGS, map_zero=True, as_pid_1=as_pid_1)
        assert done.returncode == 0, done

    return Candidate(name, op)


async def run(rounds: int) -> list[Row]:
    candidates = [
        _program("create_subprocess_exec /bin/true (floor)", ["/bin/true"], "coreutils"),
        _aiospaces(False),
        _aiospaces(True),
        _program(
            "unshare -Ur -pf -m -u -i",
            ["unshare", "-Ur", "-pf", "-m", "-u", "-i", "/bin/true"],
            "util-linux",
        ),
        _program(
            "bwrap --unshare-all --ro-bind / /",
            ["bwrap", "--unshare-all", "--ro-bind", "/", "/", "/bin/true"],
            "apt-get install bubblewrap",
        ),
    ]
    candidates[0].floor = True
    return await interleave("exec spawn-to-exit", "user+pid+mnt+uts+ipc", candidates, rounds)
