"""spawn() and Child: real children, real namespaces, on both loops."""

from __future__ import annotations

import asyncio
import os
import pickle
import random
import signal
import socket
import sys
import threading
import time

import pytest
from helpers import ns_ids, proc_state, run_python, thread_count

import aiospaces
from aiospaces import (
    CLONE_NEWIPC,
    CLONE_NEWNET,
    CLONE_NEWNS,
    CLONE_NEWPID,
    CLONE_NEWUSER,
    CLONE_NEWUTS,
    ChildError,
    ChildExited,
    ChildKilled,
    ChildLost,
    spawn,
)

USER_PID = CLONE_NEWUSER | CLONE_NEWPID

# Counts clones: clone3 runs the os.register_at_fork hooks as os.fork() does.
FORKS = [0]
os.register_at_fork(before=lambda: FORKS.__setitem__(0, FORKS[0] + 1))


async def test_returns_value() -> None:
    child = await spawn(lambda a, b=0: a + b, args=(40,), kwargs={"b": 2})
    assert await child.result() == 42
    assert child.returncode == 0
    assert child.pidfd == -1  # closed once reaped


@pytest.mark.userns
async def test_pid_1_in_new_pid_namespace() -> None:
    child = await spawn(lambda: (os.getpid(), os.getppid(), os.getuid()), USER_PID, map_zero=True)
    assert await child.result() == (1, 0, 0)


@pytest.mark.userns
@pytest.mark.parametrize(
    ("flag", "ns"),
    [
        (CLONE_NEWUSER, "user"),
        (CLONE_NEWPID, "pid"),
        (CLONE_NEWNS, "mnt"),
        (CLONE_NEWNET, "net"),
        (CLONE_NEWUTS, "uts"),
        (CLONE_NEWIPC, "ipc"),
        (aiospaces.CLONE_NEWCGROUP, "cgroup"),
        (aiospaces.CLONE_NEWTIME, "time"),
    ],
)
async def test_each_namespace_is_new(flag: int, ns: str) -> None:
    outside = ns_ids()

    def inside() -> dict[str, int]:
        if ns in ("pid", "time"):
            # pid_for_children/time_for_children name the new one for a fork
            # but the child itself is already inside (pid) / needs exec (time):
            # read our own links, which are the child's.
            pass
        return ns_ids()

    child = await spawn(inside, CLONE_NEWUSER | flag, map_zero=True)
    ids = await child.result()
    changed = {k for k in outside if ids.get(k) != outside[k]}
    if ns == "time":
        # A new time namespace applies to children of the cloned process;
        # the clone itself stays in the old one (see time_namespaces(7)).
        assert changed <= {"user", "time"}
        child = await spawn(_time_ns_of_grandchild, CLONE_NEWUSER | flag, map_zero=True)
        assert await child.result() != outside["time"]
    else:
        assert changed == {"user", ns}


def _time_ns_of_grandchild() -> int:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(w, str(ns_ids()["time"]).encode())
        os._exit(0)
    os.waitpid(pid, 0)
    return int(os.read(r, 64))


async def test_exception_travels_with_remote_traceback() -> None:
    def boom() -> None:
        raise KeyError("nope")

    child = await spawn(boom)
    with pytest.raises(KeyError, match="nope") as info:
        await child.result()
    assert isinstance(info.value.__cause__, aiospaces.RemoteTraceback)
    assert "boom" in str(info.value.__cause__)
    assert child.returncode == 1


async def test_closure_sees_parent_state() -> None:
    secret = object()
    ident = id(secret)
    child = await spawn(lambda: id(secret) == ident)
    assert await child.result() is True


async def test_async_function_runs_on_fresh_loop() -> None:
    parent_loop = asyncio.get_running_loop()

    async def work(x: int) -> tuple[int, bool]:
        await asyncio.sleep(0.01)
        return x * 2, asyncio.get_running_loop() is parent_loop

    child = await spawn(work, args=(21,))
    assert await child.result() == (42, False)


async def test_64_mib_result_without_deadlock() -> None:
    child = await spawn(lambda: os.urandom(16) * (4 << 20))
    value = await child.result()
    assert len(value) == 64 << 20
    assert value[:16] == value[-16:]


async def test_unpicklable_value_is_child_error() -> None:
    child = await spawn(threading.Lock)
    with pytest.raises(ChildError, match="could not be pickled"):
        await child.result()


class Unpicklable(Exception):
    def __reduce__(self) -> str | tuple[object, ...]:
        raise TypeError("no pickling for you")


class BreaksOnUnpickle(Exception):
    def __init__(self, a: int, b: int) -> None:  # pickles as cls(*args) with one arg
        super().__init__(a)


async def test_unpicklable_exception_is_child_error() -> None:
    def boom() -> None:
        raise Unpicklable("bad")

    child = await spawn(boom)
    with pytest.raises(ChildError, match="could not be pickled") as info:
        await child.result()
    assert "boom" in (info.value.remote_traceback or "")


async def test_exception_that_cannot_be_rebuilt_is_child_error() -> None:
    def boom() -> None:
        raise BreaksOnUnpickle(1, 2)

    child = await spawn(boom)
    with pytest.raises(ChildError, match="could not be unpickled"):
        await child.result()


async def test_no_result_exit_and_signal() -> None:
    child = await spawn(os._exit, args=(5,))
    with pytest.raises(ChildExited) as ex:
        await child.result()
    assert ex.value.returncode == 5
    child = await spawn(sys.exit, args=(3,))
    assert await child.wait() == 3
    child = await spawn(lambda: os.kill(os.getpid(), signal.SIGKILL))
    with pytest.raises(ChildKilled) as killed:
        await child.result()
    assert killed.value.signal == signal.SIGKILL
    assert child.returncode == -signal.SIGKILL


async def test_signals_go_through_pidfd_and_fail_once_reaped() -> None:
    child = await spawn(time.sleep, args=(30,))
    child.send_signal(signal.SIGUSR1)
    assert await child.wait() == -signal.SIGUSR1
    with pytest.raises(ProcessLookupError):
        child.kill()
    assert "returncode=-10" in repr(child)


@pytest.mark.userns
async def test_terminate_pid_1_child_within_a_second() -> None:
    child = await spawn(time.sleep, USER_PID, args=(30,), map_zero=True)
    t0 = time.monotonic()
    child.terminate()
    assert await child.wait() == 128 + signal.SIGTERM
    assert time.monotonic() - t0 < 1.0
    with pytest.raises(ChildExited):
        await child.result()


async def test_async_with_kills_and_reaps() -> None:
    async with await spawn(time.sleep, args=(30,)) as child:
        pid = child.pid
        assert child.returncode is None
        assert "running" in repr(child)
    assert child.returncode == -signal.SIGKILL
    assert proc_state(pid) is None


async def test_cancelling_wait_does_not_kill() -> None:
    child = await spawn(time.sleep, args=(0.3,))
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(child.wait(), 0.01)
    assert child.returncode is None
    assert await child.wait() == 0


async def test_many_waiters() -> None:
    child = await spawn(time.sleep, args=(0.05,))
    results = await asyncio.gather(*(child.wait() for _ in range(10)), child.result())
    assert results == [0] * 10 + [None]


@pytest.mark.userns
@pytest.mark.parametrize("seed", range(6))
async def test_cancel_spawn_at_random_points_leaves_nothing(seed: int) -> None:
    rnd = random.Random(seed)

    async def one() -> None:
        task = asyncio.ensure_future(spawn(time.sleep, USER_PID, args=(5,), map_zero=True))
        # Let the task reach a random await of the handshake.
        for _ in range(rnd.randrange(0, 6)):
            await asyncio.sleep(0)
        if rnd.random() < 0.5:
            await asyncio.sleep(rnd.random() * 0.004)
        task.cancel()
        try:
            child = await task
        except asyncio.CancelledError:
            return
        # Too late to cancel the spawn: it is a running child; end it.
        async with child:
            pass

    await asyncio.gather(*(one() for _ in range(20)))
    # the autouse leak check verifies no process, zombie or fd is left


async def test_mixed_with_asyncio_subprocesses() -> None:
    async def sub(code: int) -> int:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", f"import sys; sys.exit({code})"
        )
        return await proc.wait()

    async def ours(code: int) -> int:
        child = await spawn(os._exit, args=(code,))
        return await child.wait()

    codes = list(range(1, 9))
    got = await asyncio.gather(*(sub(c) for c in codes), *(ours(c) for c in codes))
    assert got == codes + codes


async def test_reaped_elsewhere_is_reported_not_hung() -> None:
    child = await spawn(time.sleep, args=(0.05,))
    # Another part of the program reaps our child (as os.wait()/waitpid(-1) would).
    pid, status = os.waitpid(child.pid, 0)
    assert pid == child.pid and os.waitstatus_to_exitcode(status) == 0
    with pytest.raises(ChildLost):
        await asyncio.wait_for(child.wait(), 5)
    assert child.returncode is None
    assert "lost" in repr(child)


async def test_fd_hygiene_close_fds_and_pass_fds() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    r, w = os.pipe()
    try:

        def fds() -> list[int]:
            return sorted(int(f) for f in os.listdir("/proc/self/fd"))

        child = await spawn(fds, pass_fds=[w])
        got = await child.result()
        # 0-2, the passed fd, the channel, and listdir's own fd
        assert listener.fileno() not in got
        assert r not in got
        assert w in got
        assert len(got) == 6
        child = await spawn(fds, close_fds=False)
        assert listener.fileno() in await child.result()
    finally:
        listener.close()
        os.close(r)
        os.close(w)


async def test_library_starts_no_threads_and_installs_no_signal_handlers() -> None:
    handlers = {
        s: signal.getsignal(s)
        for s in signal.valid_signals()
        if s not in (signal.SIGKILL, signal.SIGSTOP)
    }
    before = thread_count()
    children = [await spawn(time.sleep, args=(0.01,)) for _ in range(5)]
    assert thread_count() == before
    await asyncio.gather(*(c.wait() for c in children))
    assert thread_count() == before
    after = {s: signal.getsignal(s) for s in handlers}
    assert after == handlers


async def test_parent_loop_signal_handlers_do_not_swallow_child_signals() -> None:
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, lambda: None)
    try:
        child = await spawn(time.sleep, args=(30,))
        child.terminate()
        assert await asyncio.wait_for(child.wait(), 5) == -signal.SIGTERM
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


@pytest.mark.userns
async def test_1000_concurrent_children_in_user_pid_namespaces() -> None:
    threads = thread_count()
    sem = asyncio.Semaphore(1000)

    async def one(i: int) -> int:
        async with sem:
            child = await spawn(lambda: (i, os.getpid()), USER_PID, map_zero=True)
            assert thread_count() == threads
            return await child.result()  # type: ignore[no-any-return]

    results = await asyncio.gather(*(one(i) for i in range(1000)))
    assert results == [(i, 1) for i in range(1000)]
    assert thread_count() == threads


@pytest.mark.userns
async def test_1000_children_alive_at_once() -> None:
    children = [await spawn(time.sleep, USER_PID, args=(30,), map_zero=True) for _ in range(1000)]
    try:
        assert all(proc_state(c.pid) in ("S", "R") for c in children)
    finally:
        for c in children:
            c.kill()
        codes = await asyncio.gather(*(c.wait() for c in children))
    assert set(codes) == {-signal.SIGKILL}


@pytest.mark.userns
@pytest.mark.parametrize(
    ("flags", "via", "grace"),
    # Through the spawner the death takes two PDEATHSIG hops (us, then it).
    [(0, "fork", 1.0), (USER_PID, "fork", 1.0), (USER_PID, "spawner", 2.0)],
)
async def test_children_die_with_a_sigkilled_parent(flags: int, via: str, grace: float) -> None:
    code = f"""
        import asyncio, os, sys, time
        import aiospaces
        async def main():
            kids = [await aiospaces.spawn(time.sleep, {flags}, args=(60,), map_zero={bool(flags)},
                                          via={via!r})
                    for _ in range(5)]
            print(" ".join(str(k.pid) for k in kids), flush=True)
            await asyncio.sleep(60)
        asyncio.run(main())
    """
    proc = run_python(code)
    assert proc.stdout is not None
    line = await asyncio.get_running_loop().run_in_executor(None, proc.stdout.readline)
    pids = [int(p) for p in line.split()]
    assert len(pids) == 5
    proc.kill()
    proc.wait()
    proc.stdout.close()
    assert proc.stderr is not None
    proc.stderr.close()
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if all(proc_state(p) in (None, "Z") for p in pids):
            break
        await asyncio.sleep(0.01)
    assert [proc_state(p) for p in pids if proc_state(p) not in (None, "Z")] == []


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"fn": 42}, TypeError, "fn must be callable"),
        ({"flags": aiospaces.CLONE_VM}, ValueError, "CLONE_VM"),
        ({"flags": aiospaces.CLONE_THREAD}, ValueError, "CLONE_THREAD"),
        ({"flags": "user"}, TypeError, "flags"),
        ({"flags": 17}, ValueError, "exit-signal"),
        ({"args": 5}, TypeError, "args"),
        ({"kwargs": [1]}, TypeError, "kwargs"),
        ({"pass_fds": [-1]}, ValueError, "pass_fds"),
        ({"pass_fds": [987654]}, ValueError, "not open"),
        ({"pass_fds": "12"}, TypeError, "pass_fds"),
        ({"close_fds": 1}, TypeError, "close_fds"),
        ({"map_zero": True}, ValueError, "CLONE_NEWUSER"),
        ({"uid_map": "0 0 1"}, ValueError, "CLONE_NEWUSER"),
        ({"flags": CLONE_NEWUSER, "uid_map": "0 x 1"}, ValueError, "uid_map"),
    ],
)
async def test_bad_arguments_raise_before_any_process(
    kwargs: dict[str, object], exc: type[Exception], match: str
) -> None:
    args: dict[str, object] = {"fn": os.getpid, **kwargs}
    fn = args.pop("fn")
    before = FORKS[0]
    with pytest.raises(exc, match=match):
        await spawn(fn, **args)  # type: ignore[arg-type]
    assert FORKS[0] == before, "a process was created before the arguments were checked"


def test_at_fork_hooks_run_as_for_os_fork() -> None:
    events: list[str] = []

    async def main() -> None:
        child = await spawn(lambda: list(events))
        in_child = await child.result()
        assert in_child == ["before", "child"]

    os.register_at_fork(
        before=lambda: events.append("before"),
        after_in_parent=lambda: events.append("parent"),
        after_in_child=lambda: events.append("child"),
    )
    asyncio.run(main())
    assert events[:2] == ["before", "parent"]


def test_remote_traceback_pickles() -> None:
    rt = aiospaces.RemoteTraceback("tb text")
    assert str(pickle.loads(pickle.dumps(rt))) == "tb text"


def test_compiled_clone_helper_is_built() -> None:
    # The ctypes fallback can hang a child of a multithreaded parent (see
    # aiospaces/_linux/_forkmodule.c); installs from this repo must build it.
    from aiospaces._linux import _syscalls

    if os.environ.get("AIOSPACES_ALLOW_NO_C_FORK") == "1":
        pytest.skip("AIOSPACES_ALLOW_NO_C_FORK=1: testing the ctypes fallback")
    assert _syscalls.HAVE_C_FORK


async def test_regression_gil_drop_request_does_not_hang_children() -> None:
    # A child cloned while another thread waited for the GIL used to inherit
    # the drop request and block forever in drop_gil() before reaching
    # PyOS_AfterFork_Child (only through the ctypes path).
    stop = threading.Event()

    def busy() -> None:
        x = 0
        while not stop.is_set():
            x += 1

    threads = [threading.Thread(target=busy) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for _ in range(60):
            child = await spawn(sum, args=(range(1000),))
            assert await asyncio.wait_for(child.result(), 10) == 499500
    finally:
        stop.set()
        for t in threads:
            t.join()


@pytest.mark.userns
@pytest.mark.parametrize("flags", [0, USER_PID])
async def test_regression_kill_0_inside_cannot_reach_our_process_group(flags: int) -> None:
    # A child in the parent's process group could signal the whole group
    # (the parent included) with kill(0, sig), even from new user+pid
    # namespaces. Children now start a new session.
    def probe() -> tuple[int, int, int]:
        return os.getsid(0), os.getpgid(0), os.getpid()

    child = await spawn(probe, flags, map_zero=bool(flags))
    sid, pgid, pid = await child.result()
    assert sid == pgid == pid  # a session and group of its own
    assert sid != os.getsid(0)

    def kill_group() -> None:
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # the sender is in its group too
        os.kill(0, signal.SIGUSR1)

    got: list[int] = []
    old = signal.signal(signal.SIGUSR1, lambda s, f: got.append(s))
    try:
        child = await spawn(kill_group, flags, map_zero=bool(flags))
        await child.result()
        await asyncio.sleep(0.05)
    finally:
        signal.signal(signal.SIGUSR1, old)
    assert got == []


async def test_new_session_false_keeps_our_group() -> None:
    child = await spawn(lambda: os.getpgid(0), new_session=False)
    assert await child.result() == os.getpgid(0)
