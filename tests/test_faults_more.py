"""More fault injection (issue 10): cancellation at *each* await of
``run(timeout=...)``, of a ``Supervisor`` restart and of a pool task; a
dead ``setns`` target; ``max_user_namespaces`` reached; a missing mount
source.

Cancellation at each await, deterministically: :class:`CancelAt` drives a
coroutine and, at its n-th suspension, cancels a task — the one running it,
or another (the ``Supervisor``'s host while its runner is at that await).
``Task.__step`` then cancels the very future the coroutine is suspended on,
exactly as a cancellation arriving at that moment would. Each test sweeps
n = 1, 2, ... until the operation completes before its n-th suspension, so
every suspension point on the path taken is hit once; after each
cancellation nothing may be left (checked at once where the API promises
"dead and reaped before the exception escapes", and by the autouse leak and
cgroup checks at the end).
"""

from __future__ import annotations

import asyncio
import errno
import os
import subprocess
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any

import pytest
from conftest import USERNS, child_pids, describe, open_fds
from helpers import children_of, proc_state
from limits_helpers import no_cgroup_leftovers  # noqa: F401  (autouse fixture)

import aiospaces
from aiospaces import (
    CLONE_NEWPID,
    CLONE_NEWUSER,
    Bind,
    NamespaceUnavailable,
    Sandbox,
    create_process,
    run,
    spawn,
)
from aiospaces.hardening import seccomp_available
from aiospaces.pool import SandboxPool
from aiospaces.supervisor import Supervisor

FORKS = [0]
os.register_at_fork(before=lambda: FORKS.__setitem__(0, FORKS[0] + 1))

USER_PID = CLONE_NEWUSER | CLONE_NEWPID
NS: dict[str, Any] = {"flags": USER_PID, "map_zero": True} if USERNS else {}
MAX_STEPS = 400  # far more suspensions than any path here has


class CancelAt:
    """Await ``coro``; at its ``n``-th suspension cancel ``victim`` (default: us)."""

    def __init__(
        self, coro: Coroutine[Any, Any, Any], n: int, victim: asyncio.Task[Any] | None = None
    ) -> None:
        self.coro, self.n, self.victim = coro, n, victim
        self.steps = 0
        self.fired = False

    def __await__(self) -> Generator[Any, Any, Any]:
        it = self.coro.__await__()
        send: Any = None
        throw: BaseException | None = None
        while True:
            try:
                yielded = it.throw(throw) if throw is not None else it.send(send)
            except StopIteration as stop:
                return stop.value
            self.steps += 1
            if self.steps == self.n:
                self.fired = True
                (self.victim or asyncio.current_task()).cancel()  # type: ignore[union-attr]
            try:
                send, throw = (yield yielded), None
            except BaseException as exc:  # passed on to the coroutine
                send, throw = None, exc


async def _drive(make: Callable[[], Coroutine[Any, Any, Any]], n: int) -> tuple[bool, bool]:
    """Run ``make()`` cancelled at its n-th suspension: (was it cancelled, did it fire)."""
    wrapper = CancelAt(make(), n)
    task = asyncio.ensure_future(_await(wrapper))
    try:
        await task
    except asyncio.CancelledError:
        if not task.cancelled():  # pragma: no cover - ours, not the task's
            raise
        return True, wrapper.fired
    return False, wrapper.fired


async def _await(aw: Awaitable[Any]) -> Any:
    return await aw


def _nothing_left(kids_before: set[int], where: str) -> None:
    """No child of ours is left, and none of a spawner's (a spawner itself,
    started by a pool, is not a task's child)."""
    spawners = {sp.pid for sp in aiospaces._spawner._ALL if sp.running}
    kids = child_pids() - kids_before - spawners
    for pid in spawners:
        kids |= {k for k in children_of(pid) if proc_state(k) not in (None, "Z")}
    assert not kids, f"{where}: children left when CancelledError escaped: {describe(kids)}"


async def _settled_fds(fds_before: set[int], where: str) -> None:
    # Transports close on the next loop iteration: give them a few.
    for _ in range(50):
        if not open_fds() - fds_before:
            return
        await asyncio.sleep(0.01)
    left = open_fds() - fds_before
    shown = {fd: _readlink(fd) for fd in sorted(left)}
    assert not left, f"{where}: fds left open: {shown}"


def _readlink(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "?"


async def _sweep(make: Callable[[], Coroutine[Any, Any, Any]], what: str) -> int:
    """Cancel ``make()`` at suspension 1, 2, ... until it completes; return the count."""
    # One full run first: uvloop opens a /dev/null of its own, once per loop.
    await make()
    kids_before, fds_before = child_pids(), open_fds()
    for n in range(1, MAX_STEPS):
        cancelled, fired = await _drive(make, n)
        if not fired:
            assert not cancelled
            return n - 1
        assert cancelled, f"{what}: cancelled at suspension {n}, but it returned normally"
        _nothing_left(kids_before, f"{what}, suspension {n}")
        await _settled_fds(fds_before, f"{what}, suspension {n}")
    pytest.fail(f"{what}: still suspending after {MAX_STEPS} steps")


# -- run(timeout=...) cancelled at each await --------------------------------------------------


async def test_cancel_run_with_timeout_at_each_await() -> None:
    def make() -> Coroutine[Any, Any, Any]:
        return run(["sh", "-c", "echo out; echo err >&2"], timeout=30, capture_output=True, **NS)

    steps = await _sweep(make, "run(timeout=30)")
    assert steps >= 3, f"only {steps} suspensions: the sweep tested little"


async def test_cancel_run_whose_timeout_expires_at_each_await() -> None:
    # The timeout fires during the run: the cancellation races the timeout's own kill.
    def make() -> Coroutine[Any, Any, Any]:
        return run(["sleep", "5"], timeout=0.05, capture_output=True, **NS)

    kids_before = child_pids()
    for n in range(1, MAX_STEPS):
        wrapper = CancelAt(make(), n)
        task = asyncio.ensure_future(_await(wrapper))
        with pytest.raises((asyncio.CancelledError, TimeoutError)) as info:
            await task
        # Cancelled where the cancellation landed first, else the timeout's error.
        assert (info.type is asyncio.CancelledError) == (wrapper.fired and task.cancelled())
        _nothing_left(kids_before, f"run(timeout=0.05), suspension {n}")
        if not wrapper.fired:
            assert n > 3, f"only {n - 1} suspensions"
            break


@pytest.mark.userns
@pytest.mark.skipif(not seccomp_available(), reason="pyseccomp/libseccomp missing")
async def test_cancel_sandboxed_run_with_timeout_at_each_await() -> None:
    # The untrusted preset: cgroup attach (as root), the guard, its timer.
    sb = Sandbox.untrusted(python=False, timeout=30)

    def make() -> Coroutine[Any, Any, Any]:
        return run(["true"], sandbox=sb, timeout=30, capture_output=True)

    steps = await _sweep(make, "run(sandbox=untrusted, timeout=30)")
    assert steps >= 3, f"only {steps} suspensions"


# -- a Supervisor restart cancelled at each await ----------------------------------------------


def _fail_fast() -> None:
    os._exit(3)


async def test_cancel_supervisor_host_at_each_await_of_a_restart() -> None:
    loop = asyncio.get_running_loop()
    kids_before = child_pids()
    runner_steps = 0
    for n in range(1, MAX_STEPS):
        host = asyncio.current_task()
        inner: asyncio.Task[Any] | None = None
        wrappers: list[CancelAt] = []

        def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kw: Any) -> asyncio.Task[Any]:
            # The supervisor's runner (Supervisor._supervise): at its n-th
            # suspension, cancel the task that holds the block.
            if getattr(coro, "__qualname__", "") == "Supervisor._supervise" and inner:
                wrapper = CancelAt(coro, n, victim=inner)
                wrappers.append(wrapper)
                coro = _await(wrapper)
            return asyncio.Task(coro, loop=loop, **kw)

        async def body() -> None:
            async with Supervisor(on_give_up="report") as sup:
                await sup.start(
                    _fail_fast, name="flappy", restart="always", max_restarts=1000,
                    backoff=(0.001, 0.002, 2.0), jitter=0.0, **NS,
                )  # fmt: skip
                await asyncio.sleep(0.2)  # about a hundred restarts

        assert host is not None
        inner = asyncio.ensure_future(body())
        loop.set_task_factory(factory)
        try:
            try:
                await inner
                cancelled = False
            except asyncio.CancelledError:
                cancelled = True
        finally:
            loop.set_task_factory(None)
        fired = any(w.fired for w in wrappers)
        runner_steps = max([w.steps for w in wrappers] or [0])
        assert cancelled == fired, f"suspension {n}: cancelled={cancelled} fired={fired}"
        _nothing_left(kids_before, f"Supervisor restart, runner suspension {n}")
        if n >= 60:  # several full restart cycles: each has the same awaits
            break
    assert runner_steps >= 10


# -- a pool task cancelled at each await ---------------------------------------------------------


def _square(x: int) -> int:
    return x * x


@pytest.mark.parametrize("via", ["fork", "spawner"])
async def test_cancel_fresh_pool_task_at_each_await(via: str) -> None:
    kids_before = child_pids()
    async with SandboxPool(size=2, fresh=True, via=via, **NS) as pool:
        assert await pool.run(_square, 3) == 9
        steps = 0
        for n in range(1, MAX_STEPS):
            cancelled, fired = await _drive(lambda: pool.run(_square, 7), n)
            if not fired:
                steps = n - 1
                break
            assert cancelled
            # The task's own child: dead and reaped as the exception escapes.
            _nothing_left(kids_before, f"pool.run (fresh), suspension {n}")
            assert await pool.run(_square, 5) == 25  # the pool keeps serving
        assert steps >= 2, f"only {steps} suspensions"
    _nothing_left(kids_before, "after the pool closed")


async def test_cancel_warm_pool_first_task_at_each_await() -> None:
    # The first task of a warm pool also starts its worker: every await of
    # that start is on the task's path.
    kids_before = child_pids()
    for n in range(1, MAX_STEPS):
        async with SandboxPool(size=1, fresh=False, **NS) as pool:
            cancelled, fired = await _drive(lambda: pool.run(_square, 7), n)
            assert cancelled == fired
            assert await pool.run(_square, 5) == 25  # a replacement worker serves
        _nothing_left(kids_before, f"warm pool, first task cancelled at suspension {n}")
        if not fired:
            assert n >= 2, f"only {n - 1} suspensions"
            break


# -- setns target already dead -------------------------------------------------------------


async def test_enter_a_zombie_target_is_a_clear_error_before_any_clone() -> None:
    target = _zombie()
    try:
        before = FORKS[0]
        with pytest.raises(ProcessLookupError, match="has exited") as info:
            await spawn(os.getpid, sandbox=Sandbox(enter=target.pid))
        assert info.value.errno == errno.ESRCH
        with pytest.raises(ProcessLookupError, match="has exited"):
            await run(["true"], sandbox=Sandbox(enter=target.pid))
        assert FORKS[0] == before, "a process was created for a dead target"
    finally:
        target.wait()
    with pytest.raises(ProcessLookupError, match="no process"):
        await spawn(os.getpid, sandbox=Sandbox(enter=target.pid))


@pytest.mark.userns
async def test_enter_a_reaped_child_is_a_clear_error() -> None:
    child = await spawn(os.getpid, USER_PID, map_zero=True)
    await child.wait()
    before = FORKS[0]
    with pytest.raises(ProcessLookupError, match="exited and was reaped"):
        await spawn(os.getpid, sandbox=Sandbox(enter=child))
    assert FORKS[0] == before


def _write(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _zombie() -> subprocess.Popen[bytes]:
    """A child that has exited and is not reaped yet."""
    target = subprocess.Popen(["true"])
    deadline = time.monotonic() + 5
    while _state(target.pid) != "Z" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _state(target.pid) == "Z"
    return target


def _state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


# -- max_user_namespaces reached ---------------------------------------------------------------


async def _spawn_with_no_userns_left() -> list[Any]:
    # We hold CAP_SYS_RESOURCE over our own user namespace, so its limit is
    # ours to set: 0 more user namespaces may be created inside it.
    _write("/proc/sys/user/max_user_namespaces", b"0")
    try:
        child = await spawn(os.getpid, CLONE_NEWUSER, map_zero=True)
    except NamespaceUnavailable as exc:
        return ["NamespaceUnavailable", exc.errno, exc.step, exc.hint or "", str(exc)]
    except Exception as exc:  # reported to the test
        return [type(exc).__name__, str(exc)]
    return ["spawned", await child.result()]


@pytest.mark.userns
async def test_max_user_namespaces_reached_gives_namespace_unavailable() -> None:
    # The limit is per user namespace: set it to 0 in a child user namespace
    # (not the host's) and spawn from inside it.
    child = await spawn(_spawn_with_no_userns_left, CLONE_NEWUSER, map_zero=True)
    got = await child.result()
    if got[0] == "PermissionError":  # pragma: no cover - a kernel without per-ns limits
        pytest.skip(f"cannot set max_user_namespaces in a user namespace here: {got}")
    assert got[0] == "NamespaceUnavailable", got
    assert got[1] == errno.ENOSPC and got[2] == "clone3"
    assert "max_" in got[3] and "namespaces" in got[3], f"the hint names the sysctl: {got[3]}"


# -- a mount source missing ---------------------------------------------------------------------


@pytest.mark.userns
async def test_missing_bind_source_is_file_not_found_before_any_process() -> None:
    missing = f"/nonexistent-aiospaces-{os.getpid()}"
    sb = Sandbox(namespaces={"user"}, mounts=(Bind(missing, "/data"),))
    before = FORKS[0]
    with pytest.raises(FileNotFoundError) as info:
        await spawn(os.getpid, sandbox=sb)
    assert info.value.filename == missing
    with pytest.raises(FileNotFoundError):
        await run(["true"], sandbox=sb)
    with pytest.raises(FileNotFoundError):
        await create_process(["true"], sandbox=sb)
    assert FORKS[0] == before, "a process was created for a missing bind source"


@pytest.mark.userns
async def test_bind_source_removed_after_the_spec_is_built() -> None:
    # Sources are resolved at spawn time, not when the Sandbox is built.
    import tempfile

    path = tempfile.mkdtemp(prefix="aiospaces-src-")
    sb = Sandbox(namespaces={"user"}, mounts=(Bind(path, "/data", readonly=True),))
    os.rmdir(path)
    before = FORKS[0]
    with pytest.raises(FileNotFoundError):
        await spawn(os.getpid, sandbox=sb)
    assert FORKS[0] == before


@pytest.mark.userns
async def test_missing_chroot_is_file_not_found_before_any_process() -> None:
    sb = Sandbox(namespaces={"user"}, chroot=f"/nonexistent-root-{os.getpid()}")
    before = FORKS[0]
    with pytest.raises(FileNotFoundError):
        await spawn(os.getpid, sandbox=sb)
    assert FORKS[0] == before


def _listdir(path: str) -> list[str]:
    return sorted(os.listdir(path))


@pytest.mark.userns
async def test_missing_mount_destination_is_created_control() -> None:
    # Control for the tests above: a missing *destination* is created in the
    # new root (not an error), so the FileNotFoundError really is the source's.
    sb = Sandbox(namespaces={"user"}, mounts=(Bind("/usr", "/a/b/c", readonly=True),))
    child = await spawn(_listdir, args=("/a/b/c",), sandbox=sb)
    assert "bin" in await child.result()
