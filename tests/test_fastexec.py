"""The C exec path (aiospaces._fastexec): what is specific to it.

tests/test_process.py and tests/test_init.py run against whichever path is
the default (this one where the extension has it); here each case runs on
both paths where that makes sense, and checks that the C path was taken.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_init import alive_with, marker

from aiospaces import CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWUSER, SpawnError, _fastexec
from aiospaces._linux.constants import CLONE_NEWTIME
from aiospaces._process import PIPE, STDOUT, create_process, run

USER_PID = CLONE_NEWUSER | CLONE_NEWPID
needs_fast = pytest.mark.skipif(
    not _fastexec.available(), reason="the C exec path needs the extension and clone3"
)
pytestmark = [pytest.mark.userns]

FORKS = [0]
os.register_at_fork(before=lambda: FORKS.__setitem__(0, FORKS[0] + 1))

MODES = {
    "userns": (CLONE_NEWUSER, {"map_zero": True}),
    "init": (USER_PID, {"map_zero": True}),
    "pid1": (USER_PID, {"map_zero": True, "as_pid_1": True}),
}


def kw(mode: str, **extra: Any) -> dict[str, Any]:
    flags, more = MODES[mode]
    return {"flags": flags, **more, **extra}


@pytest.fixture(params=["fast", "fork"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    if request.param == "fast":
        if not _fastexec.available():
            pytest.skip("the C exec path needs the extension and clone3")
        monkeypatch.delenv(_fastexec.ENV_VAR, raising=False)
    else:
        monkeypatch.setenv(_fastexec.ENV_VAR, "fork")
    yield request.param


modes = pytest.mark.parametrize("mode", list(MODES))


# -- which path ------------------------------------------------------------------------


@needs_fast
@modes
async def test_the_c_path_is_the_default_and_runs_no_fork_hooks(
    mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(_fastexec.ENV_VAR, raising=False)
    before = FORKS[0]
    async with await create_process(["true"], **kw(mode)) as proc:
        assert getattr(proc._core, "fastexec", False) is True
        assert await proc.wait() == 0
    # os.fork()'s at-fork hooks run on the fork path only: the interpreter
    # was never copied.
    assert FORKS[0] == before


@modes
async def test_env_var_forces_the_fork_path(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_fastexec.ENV_VAR, "fork")
    before = FORKS[0]
    async with await create_process(["true"], **kw(mode)) as proc:
        assert getattr(proc._core, "fastexec", False) is False
        assert await proc.wait() == 0
    assert FORKS[0] == before + 1


@needs_fast
@modes
async def test_the_region_is_released_once_reaped(
    mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(_fastexec.ENV_VAR, raising=False)
    released: list[tuple[int, int]] = []
    real = _fastexec._release

    def spy(addr: int, size: int) -> None:
        released.append((addr, size))
        real(addr, size)

    monkeypatch.setattr(_fastexec, "_release", spy)
    mark = marker()
    proc = await create_process(["sleep", mark], **kw(mode))
    await asyncio.sleep(0.05)
    assert released == []  # with an init, PID 1 still runs on it
    proc.kill()
    await proc.wait()
    await asyncio.sleep(0)  # the done callback
    assert len(released) == 1
    assert released[0][1] % os.sysconf("SC_PAGE_SIZE") == 0


# -- errors reported by the C child ----------------------------------------------------


@modes
async def test_missing_program_is_an_e_frame(path: str, mode: str) -> None:
    with pytest.raises(FileNotFoundError) as info:
        await run(["no-such-program-aiospaces"], **kw(mode))
    assert info.value.filename == "no-such-program-aiospaces"
    assert info.value.strerror == os.strerror(2)


@modes
async def test_permission_error_wins_over_not_found(path: str, mode: str, tmp_path: Path) -> None:
    # As execvpe: the first error that is not "not here" is the one reported.
    (tmp_path / "tool").write_text("#!/bin/sh\n")
    (tmp_path / "tool").chmod(0o644)
    env = {"PATH": f"/nonexistent:{tmp_path}:/usr/bin"}
    with pytest.raises(PermissionError) as info:
        await run(["tool"], env=env, **kw(mode))
    assert info.value.filename == "tool"


@modes
async def test_bad_cwd_is_a_spawn_error_with_a_message(path: str, mode: str) -> None:
    with pytest.raises(SpawnError) as info:
        await run(["true"], cwd="/no/such/dir", **kw(mode))
    assert (info.value.step, info.value.errno) == ("chdir", 2)
    assert info.value.filename == "/no/such/dir"
    assert os.strerror(2) in str(info.value)


# -- the C init ------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP])
async def test_c_init_forwards_signals(path: str, sig: signal.Signals) -> None:
    mark = marker()
    proc = await create_process(["sleep", mark], USER_PID, map_zero=True)
    proc.send_signal(sig)
    assert await asyncio.wait_for(proc.wait(), 10) == -sig
    assert alive_with(mark) == []


async def test_c_init_forwards_to_a_handler_and_reports_its_status(path: str) -> None:
    script = 'trap "exit 7" USR2; echo ready; while :; do sleep 0.05; done'
    proc = await create_process(["sh", "-c", script], USER_PID, map_zero=True, stdout=PIPE)
    assert proc.stdout is not None
    assert await proc.stdout.readline() == b"ready\n"
    proc.send_signal(signal.SIGUSR2)
    await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 7


@needs_fast
async def test_program_runs_when_create_process_returns(monkeypatch: pytest.MonkeyPatch) -> None:
    # R comes after the program's execve completed: its cmdline is there.
    # (The fork path's init sends R when posix_spawn's vfork returns, which
    # is before the kernel has loaded the image: it can lose this race.)
    monkeypatch.delenv(_fastexec.ENV_VAR, raising=False)
    for _ in range(20):
        mark = marker()
        async with await create_process(["sleep", mark], USER_PID, map_zero=True) as proc:
            assert alive_with(mark)
        assert proc.returncode == -signal.SIGKILL


async def test_c_init_reaps_orphans_and_ends_the_sandbox(path: str) -> None:
    mark = marker()
    script = (
        "mount -t proc proc /proc; (sleep 0.01 &); (sleep 0.01 &); sleep 0.3; "
        f"ps -o stat= ax | grep -c Z; sleep {mark} & exit 0"
    )
    done = await run(
        ["sh", "-c", script], USER_PID | CLONE_NEWNS, map_zero=True, capture_output=True
    )
    assert done.stdout.strip() == b"0", done
    assert alive_with(mark) == []


async def test_program_is_pid_2_whatever_the_path(path: str) -> None:
    env = {"PATH": "/nonexistent:/also/not:/usr/bin:/bin"}
    done = await run(["sh", "-c", "echo $$"], USER_PID, map_zero=True, env=env, capture_output=True)
    assert done.stdout == b"2\n"


# -- the program's process state -------------------------------------------------------


def _status_fields(text: bytes) -> dict[str, int]:
    out = {}
    for line in text.decode().splitlines():
        key, _, value = line.partition(":")
        if key in ("SigBlk", "SigCgt", "SigIgn"):
            out[key] = int(value.strip(), 16)
    return out


@modes
async def test_program_starts_with_default_signals(
    path: str, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A Python handler in the parent must never reach the program (nor run
    # in the C child, which shares the parent's memory).
    got: list[int] = []
    old = signal.signal(signal.SIGUSR1, lambda s, f: got.append(s))
    try:
        done = await run(["cat", "/proc/self/status"], capture_output=True, **kw(mode))
    finally:
        signal.signal(signal.SIGUSR1, old)
    f = _status_fields(done.stdout)
    assert f["SigBlk"] == 0 and f["SigCgt"] == 0, f
    assert not f["SigIgn"] & (1 << (signal.SIGPIPE - 1)), f
    # The C init traces the program only until its execve completes.
    assert b"\nTracerPid:\t0\n" in done.stdout
    assert got == []


@modes
async def test_stdio_plan(path: str, mode: str) -> None:
    script = "read line; echo out:$line; echo err:$line >&2"
    done = await run(["sh", "-c", script], input=b"x\n", stdout=PIPE, stderr=STDOUT, **kw(mode))
    assert done.stdout == b"out:x\nerr:x\n"


@modes
async def test_pass_fds_and_close_fds_false(path: str, mode: str) -> None:
    r, w = os.pipe()
    r2, w2 = os.pipe()
    os.set_inheritable(w2, True)
    try:
        done = await run(["sh", "-c", f"echo a > /dev/fd/{w}"], pass_fds=[w], **kw(mode))
        assert done.returncode == 0
        assert os.read(r, 10) == b"a\n"
        done = await run(["sh", "-c", f"echo b > /dev/fd/{w2}"], close_fds=False, **kw(mode))
        assert done.returncode == 0
        assert os.read(r2, 10) == b"b\n"
    finally:
        for fd in (r, w, r2, w2):
            os.close(fd)


CLOSED_STDIO = """
import asyncio, os, sys
os.close(0); os.close(1)
from aiospaces import CLONE_NEWUSER, CLONE_NEWPID
from aiospaces._process import run, PIPE
async def main():
    done = await run(["sh", "-c", "echo hi"], CLONE_NEWUSER | {pid}, map_zero=True, stdout=PIPE)
    os.write(2, done.stdout)
asyncio.run(main())
"""


@pytest.mark.parametrize("pid", [0, CLONE_NEWPID])
def test_parent_with_stdio_closed(path: str, pid: int) -> None:
    # The channel may get fd 0 or 1: it is moved up before the stdio plan.
    r = subprocess.run(
        [sys.executable, "-c", CLOSED_STDIO.format(pid=pid)],
        capture_output=True,
        timeout=30,
        check=False,
        env={**os.environ},
    )
    assert (r.returncode, r.stderr) == (0, b"hi\n")


# -- many at once ----------------------------------------------------------------------


async def test_many_concurrent_spawns(path: str) -> None:
    runs = [
        run(["sh", "-c", f"exit {i % 5}"], USER_PID, map_zero=True, as_pid_1=bool(i % 2))
        for i in range(40)
    ]
    done = await asyncio.gather(*runs)
    assert [d.returncode for d in done] == [i % 5 for i in range(40)]


@pytest.mark.parametrize("pid", [0, CLONE_NEWPID])
async def test_time_namespace_takes_the_fork_path(pid: int) -> None:
    # A CLONE_VM child would stay in our time namespace: not eligible.
    ours = os.readlink("/proc/self/ns/time")
    flags = CLONE_NEWUSER | CLONE_NEWTIME | pid
    async with await create_process(
        ["readlink", "/proc/self/ns/time"], flags, map_zero=True, stdout=PIPE
    ) as proc:
        assert getattr(proc._core, "fastexec", False) is False
        out, _ = await proc.communicate()
    assert out.strip() and out.strip().decode() != ours
