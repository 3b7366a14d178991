"""create_process() and run(): real programs, streams, errors, cancellation."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_init import alive_with, marker

from aiospaces import CLONE_NEWPID, CLONE_NEWUSER, SpawnError
from aiospaces._process import (
    DEVNULL,
    PIPE,
    STDOUT,
    CompletedRun,
    Process,
    RunTimeout,
    create_process,
    run,
)

USER_PID = CLONE_NEWUSER | CLONE_NEWPID

# Counts clones: clone3 runs the os.register_at_fork hooks as os.fork() does.
FORKS = [0]
os.register_at_fork(before=lambda: FORKS.__setitem__(0, FORKS[0] + 1))

# Each mode: (flags, extra kwargs); the init, the program as PID 1, no pidns.
MODES = {
    "plain": (0, {}),
    "userns": (CLONE_NEWUSER, {"map_zero": True}),
    "init": (USER_PID, {"map_zero": True}),
    "pid1": (USER_PID, {"map_zero": True, "as_pid_1": True}),
}
userns = pytest.mark.userns


def modes(*names: str) -> Any:
    names = names or tuple(MODES)
    return pytest.mark.parametrize(
        "mode",
        [pytest.param(n, marks=[userns] if MODES[n][0] else []) for n in names],
    )


def kw(mode: str, **extra: Any) -> dict[str, Any]:
    flags, more = MODES[mode]
    return {"flags": flags, **more, **extra}


# -- basics -------------------------------------------------------------------------


@modes()
async def test_echo(mode: str) -> None:
    done = await run(["echo", "hello"], capture_output=True, **kw(mode))
    assert isinstance(done, CompletedRun)
    assert (done.returncode, done.stdout, done.stderr) == (0, b"hello\n", b"")
    assert not done.truncated


@modes()
async def test_exit_code_and_check(mode: str) -> None:
    done = await run(
        ["sh", "-c", "echo out; echo err >&2; exit 3"], capture_output=True, **kw(mode)
    )
    assert done.returncode == 3
    with pytest.raises(subprocess.CalledProcessError) as info:
        await run(["sh", "-c", "echo out; exit 3"], capture_output=True, check=True, **kw(mode))
    assert info.value.returncode == 3
    assert info.value.stdout == b"out\n"


@userns
async def test_uid_inside_is_zero() -> None:
    done = await run(["id", "-u"], CLONE_NEWUSER, map_zero=True, capture_output=True)
    assert done.stdout == b"0\n"


async def test_process_shape() -> None:
    proc = await create_process(["cat"], stdin=PIPE, stdout=PIPE)
    assert isinstance(proc, Process)
    assert proc.pid > 0 and proc.pidfd >= 0 and proc.returncode is None
    assert "running" in repr(proc)
    assert proc.stderr is None
    out, err = await proc.communicate(b"abc")
    assert (out, err, proc.returncode) == (b"abc", None, 0)
    assert proc.pidfd == -1
    assert await proc.wait() == 0


async def test_env_cwd_and_path_lookup(tmp_path: Path) -> None:
    tool = tmp_path / "mytool"
    tool.write_text('#!/bin/sh\necho "$GREETING from $(pwd)"\n')
    tool.chmod(0o755)
    env = {"PATH": f"/nonexistent:{tmp_path}:/usr/bin:/bin", "GREETING": "hi"}
    done = await run(["mytool"], env=env, cwd="/tmp", capture_output=True)
    assert done.stdout == b"hi from /tmp\n"
    # Our own PATH does not have it: the child's environment decides.
    with pytest.raises(FileNotFoundError):
        await run(["mytool"])


# -- execve and setup errors ----------------------------------------------------------


@modes()
async def test_missing_program(mode: str) -> None:
    with pytest.raises(FileNotFoundError) as info:
        await run(["no-such-program-aiospaces", "x"], **kw(mode))
    assert info.value.filename == "no-such-program-aiospaces"
    with pytest.raises(FileNotFoundError) as info:
        await run(["/no/such/program"], **kw(mode))
    assert info.value.filename == "/no/such/program"


@modes()
async def test_not_executable(mode: str, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.write_text("not a program")
    data.chmod(0o644)
    if os.geteuid() == 0 and not MODES[mode][0]:
        data.chmod(0o600)  # root may exec anything with an x bit: there is none
    with pytest.raises(PermissionError) as info:
        await run([str(data)], **kw(mode))
    assert info.value.filename == str(data)


@modes("plain", "init")
async def test_bad_cwd_names_the_step(mode: str) -> None:
    with pytest.raises(SpawnError) as info:
        await run(["true"], cwd="/no/such/dir", **kw(mode))
    assert info.value.step == "chdir"
    assert info.value.errno == 2
    assert info.value.filename == "/no/such/dir"


BAD_ARGS: list[tuple[dict[str, Any], type[Exception]]] = [
    ({"argv": "echo hi"}, TypeError),
    ({"argv": []}, ValueError),
    ({"argv": ["echo", 3]}, TypeError),
    ({"argv": ["ec\0ho"]}, ValueError),
    ({"flags": "x"}, TypeError),
    ({"stdin": STDOUT}, ValueError),
    ({"stdout": "pipe"}, TypeError),
    ({"stdout": True}, TypeError),
    ({"stderr": 987654}, ValueError),
    ({"env": {"A=B": "c"}}, ValueError),
    ({"env": ["A"]}, TypeError),
    ({"env": {"A": 1}}, TypeError),
    ({"cwd": 3}, TypeError),
    ({"pass_fds": [987654]}, ValueError),
    ({"close_fds": 1}, TypeError),
    ({"as_pid_1": True}, ValueError),  # without CLONE_NEWPID
    ({"map_zero": True}, ValueError),  # without CLONE_NEWUSER
    ({"die_with_parent": None}, TypeError),
]


@pytest.mark.parametrize(("bad", "exc"), BAD_ARGS)
async def test_bad_arguments_before_any_process(bad: dict[str, Any], exc: type[Exception]) -> None:
    args = {"argv": ["true"], **bad}
    before = FORKS[0]
    with pytest.raises(exc):
        await create_process(**args)
    assert FORKS[0] == before


@pytest.mark.parametrize(
    ("bad", "exc"),
    [
        ({"timeout": "1"}, TypeError),
        ({"timeout": -1}, ValueError),
        ({"max_output": -1}, ValueError),
        ({"max_output": 1.5}, TypeError),
        ({"input": "text"}, TypeError),
        ({"input": b"x", "stdin": DEVNULL}, ValueError),
        ({"capture_output": True, "stdout": PIPE}, ValueError),
        ({"check": 1}, TypeError),
    ],
)
async def test_bad_run_arguments_before_any_process(
    bad: dict[str, Any], exc: type[Exception]
) -> None:
    before = FORKS[0]
    with pytest.raises(exc):
        await run(["true"], **bad)
    assert FORKS[0] == before


# -- streams ----------------------------------------------------------------------------


@modes("plain", "init")
async def test_100_mib_stdout(mode: str) -> None:
    size = 100 << 20
    proc = await create_process(["head", "-c", str(size), "/dev/zero"], stdout=PIPE, **kw(mode))
    out, _ = await proc.communicate()
    assert len(out or b"") == size
    assert proc.returncode == 0


@modes("plain", "init")
async def test_interleaved_stdin_stdout_no_deadlock(mode: str) -> None:
    # More than any pipe buffer in both directions at once.
    data = random.randbytes(8 << 20)
    proc = await create_process(["cat"], stdin=PIPE, stdout=PIPE, stderr=PIPE, **kw(mode))
    out, err = await asyncio.wait_for(proc.communicate(data), 60)
    assert out == data
    assert err == b""


async def test_stream_objects_line_by_line() -> None:
    async with await create_process(["cat"], stdin=PIPE, stdout=PIPE) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        for i in range(3):
            proc.stdin.write(b"line %d\n" % i)
            await proc.stdin.drain()
            assert await proc.stdout.readline() == b"line %d\n" % i
        proc.stdin.close()
        assert await proc.stdout.read() == b""
        assert await proc.wait() == 0


@modes("plain", "init")
async def test_stderr_to_stdout(mode: str) -> None:
    done = await run(["sh", "-c", "echo out; echo err >&2"], stdout=PIPE, stderr=STDOUT, **kw(mode))
    assert done.stdout == b"out\nerr\n"
    assert done.stderr is None


@modes("plain", "init")
async def test_devnull(mode: str) -> None:
    done = await run(
        ["sh", "-c", "cat; echo gone >&2"], stdin=DEVNULL, stdout=PIPE, stderr=DEVNULL, **kw(mode)
    )
    assert done.stdout == b""
    assert done.stderr is None


@modes("plain", "init")
async def test_fd_and_file_object(mode: str) -> None:
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        done = await run(
            ["sh", "-c", "echo to-out; echo to-err >&2"],
            stdout=out,
            stderr=err.fileno(),
            **kw(mode),
        )
        assert done.returncode == 0
        out.seek(0)
        err.seek(0)
        assert (out.read(), err.read()) == (b"to-out\n", b"to-err\n")


@modes("plain", "init")
async def test_pass_fds(mode: str) -> None:
    r, w = os.pipe()
    try:
        done = await run(["sh", "-c", f"echo through > /dev/fd/{w}"], pass_fds=[w], **kw(mode))
        assert done.returncode == 0
        assert os.read(r, 100) == b"through\n"
        # Without pass_fds the fd does not exist in the program.
        done = await run(["sh", "-c", f"echo no > /dev/fd/{w}"], stderr=DEVNULL, **kw(mode))
        assert done.returncode != 0
    finally:
        os.close(r)
        os.close(w)


async def test_input_to_a_program_that_does_not_read() -> None:
    done = await run(["true"], input=os.urandom(1 << 20))
    assert done.returncode == 0


# -- run(): timeout and max_output ------------------------------------------------------


@userns
@pytest.mark.parametrize("as_pid_1", [False, True])
async def test_timeout_kills_everything_and_keeps_output(as_pid_1: bool) -> None:
    mark = marker()
    script = f"echo started; echo warn >&2; sleep {mark} & sleep {mark}"
    with pytest.raises(RunTimeout) as info:
        await run(
            ["sh", "-c", script],
            USER_PID,
            map_zero=True,
            as_pid_1=as_pid_1,
            capture_output=True,
            timeout=1,
        )
    exc = info.value
    assert isinstance(exc, TimeoutError) and isinstance(exc, subprocess.TimeoutExpired)
    assert exc.timeout == 1
    assert exc.stdout == b"started\n"
    assert exc.stderr == b"warn\n"
    assert alive_with(mark) == []


async def test_timeout_without_pid_namespace_kills_the_program() -> None:
    mark = marker()
    with pytest.raises(TimeoutError):
        await run(["sleep", mark], timeout=0.2)
    assert alive_with(mark) == []


@modes("plain", "init")
async def test_max_output_truncates_and_reports(mode: str) -> None:
    done = await run(
        ["sh", "-c", "head -c 3000000 /dev/zero; echo small >&2"],
        capture_output=True,
        max_output=1000,
        **kw(mode),
    )
    assert done.returncode == 0  # drained: the writer never blocked
    assert done.stdout == b"\0" * 1000
    assert done.stdout_truncated and done.truncated
    assert done.stderr == b"small\n" and not done.stderr_truncated
    assert "stdout_truncated=True" in repr(done)


# -- ownership and cancellation ------------------------------------------------------------


@modes("plain", "init")
async def test_async_with_kills_and_reaps(mode: str) -> None:
    mark = marker()
    async with await create_process(["sleep", mark], stdout=PIPE, **kw(mode)) as proc:
        assert alive_with(mark)
    assert proc.returncode == -signal.SIGKILL
    assert alive_with(mark) == []


async def _cancel_after(delay: float, make: Callable[[], Any]) -> None:
    task = asyncio.ensure_future(make())
    await asyncio.sleep(delay)
    task.cancel()
    try:
        result = await task
    except asyncio.CancelledError:
        return
    if isinstance(result, Process):  # finished before the cancel: clean up
        async with result:
            pass


@userns
@pytest.mark.parametrize("seed", range(4))
async def test_cancel_create_process_and_run_at_random_points(seed: int) -> None:
    rng = random.Random(seed)
    mark = marker()
    for _ in range(6):
        delay = rng.uniform(0, 0.01)
        mode = rng.choice(["plain", "init", "pid1"])
        flags, extra = MODES[mode]
        # Without a pid namespace a killed shell's background job survives
        # (as with subprocess): only namespaced modes get a grandchild.
        script = f"sleep {mark} & sleep {mark}" if flags else f"exec sleep {mark}"
        await _cancel_after(
            delay,
            lambda: create_process(["sh", "-c", script], flags, stdout=PIPE, **extra),
        )
        await _cancel_after(
            delay,
            lambda: run(["sh", "-c", script], flags, capture_output=True, **extra),
        )
    assert alive_with(mark) == []


@userns
@pytest.mark.parametrize("delay", [0, 0.001, 0.01, 0.05])
async def test_cancel_communicate_kills(delay: float) -> None:
    mark = marker()
    proc = await create_process(
        ["sh", "-c", f"cat; sleep {mark}"], USER_PID, map_zero=True, stdin=PIPE, stdout=PIPE
    )
    task = asyncio.ensure_future(proc.communicate(b"x" * (1 << 20)))
    await asyncio.sleep(delay)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert proc.returncode == -signal.SIGKILL
    assert alive_with(mark) == []


async def test_cancel_wait_leaves_the_process() -> None:
    async with await create_process(["sleep", "100"]) as proc:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(proc.wait(), 0.05)
        assert proc.returncode is None
        proc.terminate()
        assert await proc.wait() == -signal.SIGTERM


def test_run_timeout_pickles() -> None:
    import pickle

    exc = pickle.loads(pickle.dumps(RunTimeout(["x"], 1.5, b"o", b"e")))
    assert (exc.cmd, exc.timeout, exc.stdout, exc.stderr) == (["x"], 1.5, b"o", b"e")


def test_not_executable_mode_bits_helper() -> None:
    # Guard for test_not_executable: 0o600 has no x bit for anyone.
    assert not 0o600 & (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    assert sys.platform.startswith("linux")


@pytest.mark.userns
@pytest.mark.parametrize("as_pid_1", [False, True])
@pytest.mark.parametrize("path", ["fast", "fork"])
async def test_regression_exec_child_has_its_own_session(
    as_pid_1: bool, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if path == "fork":
        monkeypatch.setenv("AIOSPACES_EXEC_PATH", "fork")
    import aiospaces

    # /proc is the host's here: /proc/self/stat shows host-side ids.
    done = await aiospaces.run(
        ["cat", "/proc/self/stat"],
        aiospaces.CLONE_NEWUSER | aiospaces.CLONE_NEWPID,
        map_zero=True,
        as_pid_1=as_pid_1,
        capture_output=True,
        check=True,
    )
    fields = done.stdout.decode().rsplit(")", 1)[1].split()
    pgrp, session = int(fields[2]), int(fields[3])
    assert session != os.getsid(0)
    assert pgrp == session  # a session and process group of its own
