"""The pid-namespace init of exec mode: numbering, signals, orphans, status."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from pathlib import Path

import pytest

from aiospaces import CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWUSER
from aiospaces._process import PIPE, create_process, run

USER_PID = CLONE_NEWUSER | CLONE_NEWPID
pytestmark = pytest.mark.userns


def marker() -> str:
    """A unique sleep length: finds the test's processes in /proc."""
    return f"1000.{uuid.uuid4().int % 10**9}"


def alive_with(arg: str) -> list[int]:
    """Pids whose command line contains ``arg`` (zombies have none)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if arg.encode() in cmd:
            found.append(int(entry.name))
    return found


PS = "mount -t proc proc /proc && echo $$ && ps -o pid= ax"


async def test_program_is_pid_2_under_the_init() -> None:
    done = await run(["sh", "-c", PS], USER_PID | CLONE_NEWNS, map_zero=True, capture_output=True)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.split()
    assert lines[0] == b"2"
    pids = sorted(int(p) for p in lines[1:])
    assert pids[:2] == [1, 2]  # the init and sh; the rest is ps itself
    assert len(pids) == 3


async def test_as_pid_1_runs_the_program_as_pid_1() -> None:
    done = await run(
        ["sh", "-c", PS],
        USER_PID | CLONE_NEWNS,
        map_zero=True,
        as_pid_1=True,
        capture_output=True,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.split()
    assert lines[0] == b"1"
    assert sorted(int(p) for p in lines[1:])[0] == 1
    assert len(lines[1:]) == 2  # sh and ps


async def test_exit_status_is_the_programs() -> None:
    done = await run(["sh", "-c", "exit 42"], USER_PID, map_zero=True)
    assert done.returncode == 42


async def test_death_by_signal_is_reported_as_the_signal() -> None:
    done = await run(["sh", "-c", "kill -9 $$"], USER_PID, map_zero=True)
    assert done.returncode == -signal.SIGKILL


@pytest.mark.parametrize(
    "sig",
    [
        signal.SIGTERM,
        signal.SIGINT,
        signal.SIGHUP,
        signal.SIGQUIT,
        signal.SIGUSR1,
        signal.SIGUSR2,
    ],
)
async def test_signals_are_forwarded_to_the_program(sig: signal.Signals) -> None:
    mark = marker()
    proc = await create_process(["sleep", mark], USER_PID, map_zero=True)
    proc.send_signal(sig)
    assert await asyncio.wait_for(proc.wait(), 10) == -sig
    assert alive_with(mark) == []


async def test_terminate_a_program_that_handles_it() -> None:
    script = 'trap "exit 7" TERM; echo ready; while :; do sleep 0.05; done'
    proc = await create_process(["sh", "-c", script], USER_PID, map_zero=True, stdout=PIPE)
    assert proc.stdout is not None
    assert await proc.stdout.readline() == b"ready\n"
    proc.terminate()
    await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 7


async def test_orphaned_grandchild_leaves_nothing() -> None:
    mark = marker()
    proc = await create_process(["sh", "-c", f"sleep {mark} & exit 0"], USER_PID, map_zero=True)
    assert await asyncio.wait_for(proc.wait(), 10) == 0
    assert alive_with(mark) == []


async def test_orphans_are_reaped_while_the_program_runs() -> None:
    # Orphans exit early; the init reaps them, the program sees no zombie.
    script = (
        "mount -t proc proc /proc; (sleep 0.01 &) ; (sleep 0.01 &); sleep 0.3; "
        "ps -o stat= ax | grep -c Z"
    )
    done = await run(
        ["sh", "-c", script], USER_PID | CLONE_NEWNS, map_zero=True, capture_output=True
    )
    assert done.stdout.strip() == b"0", done


async def test_kill_ends_the_whole_sandbox() -> None:
    mark = marker()
    proc = await create_process(
        ["sh", "-c", f"sleep {mark} & sleep {mark}"], USER_PID, map_zero=True
    )
    proc.kill()
    assert await proc.wait() == -signal.SIGKILL
    assert alive_with(mark) == []


async def test_the_init_holds_no_pipe() -> None:
    # The program closes its stdout and sleeps: EOF arrives now, not when
    # the sandbox ends, so the init holds no copy of the pipe.
    mark = marker()
    async with await create_process(
        ["sh", "-c", f"exec >&-; sleep {mark}"], USER_PID, map_zero=True, stdout=PIPE
    ) as proc:
        assert proc.stdout is not None
        assert await asyncio.wait_for(proc.stdout.read(), 10) == b""
        assert proc.returncode is None
    assert alive_with(mark) == []


async def test_close_fds_false_init_drops_our_cloexec_fds() -> None:
    r, w = os.pipe()  # close-on-exec: the program never sees it
    try:
        mark = marker()
        async with await create_process(
            ["sleep", mark], USER_PID, map_zero=True, close_fds=False
        ) as proc:
            await asyncio.sleep(0.05)
            os.close(w)
            w = -1
            loop = asyncio.get_running_loop()
            fut: asyncio.Future[bytes] = loop.create_future()
            loop.add_reader(r, lambda: fut.done() or fut.set_result(os.read(r, 1)))
            try:
                assert await asyncio.wait_for(fut, 5) == b""  # EOF: nobody else holds w
            finally:
                loop.remove_reader(r)
            assert proc.returncode is None
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


async def test_missing_program_under_the_init() -> None:
    with pytest.raises(FileNotFoundError) as info:
        await run(["no-such-program-aiospaces"], USER_PID, map_zero=True)
    assert info.value.filename == "no-such-program-aiospaces"


@pytest.mark.root
async def test_init_as_root_without_user_namespace() -> None:
    done = await run(["sh", "-c", "echo $$"], CLONE_NEWPID, capture_output=True)
    assert done.stdout == b"2\n"
