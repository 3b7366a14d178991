"""SandboxPool: order, backpressure, isolation of timeouts and crashes, the
Executor adapter, warm workers. Real children; concurrency read from /proc."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import math
import os
import signal
import threading
import time
from collections.abc import AsyncIterator

import pytest
from conftest import child_pids
from helpers import children_of, proc_state

import aiospaces
from aiospaces import (
    CLONE_NEWPID,
    CLONE_NEWUSER,
    ChildExited,
    ChildKilled,
    RemoteTraceback,
)
from aiospaces.pool import PoolExecutor, SandboxPool

USER_PID = CLONE_NEWUSER | CLONE_NEWPID
MODES = [pytest.param(True, id="fresh"), pytest.param(False, id="warm")]

# Module-level, so that warm workers can receive them by reference.
STATE: list[int] = []


def square(x: int) -> int:
    return x * x


def slow_square(x: int) -> int:
    time.sleep(0.005)  # long enough for the sampler to see the pool busy
    return x * x


def sleep_then(seconds: float, value: object = None) -> object:
    time.sleep(seconds)
    return value


def crash(how: str) -> None:
    if how == "exit":
        os._exit(3)
    if how == "segv":  # a real fault: it kills even a pid namespace's init
        import ctypes
        import faulthandler

        faulthandler.disable()
        signal.signal(signal.SIGSEGV, signal.SIG_DFL)
        ctypes.string_at(0)
    if how == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(5)


def fail(msg: str) -> None:
    raise ValueError(msg)


def remember(x: int) -> list[int]:
    STATE.append(x)
    return list(STATE)


def ids() -> tuple[int, int, int]:
    return os.getpid(), os.getsid(0), os.getuid()


async def aio_double(x: int) -> int:
    await asyncio.sleep(0.001)
    return 2 * x


class Sampler:
    """Counts our live children (running or zombie) from /proc, often; or
    those of a spawner process (its children are the pool's sandboxes)."""

    def __init__(self, spawner: aiospaces.Spawner | None = None) -> None:
        self.peak = 0
        self.samples = 0
        self._spawner = spawner
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            if self._spawner is not None:
                kids = children_of(self._spawner.pid)
            else:  # ours, but for a spawner a pool may have started
                kids = child_pids() - {sp.pid for sp in aiospaces._spawner._ALL}
            self.peak = max(self.peak, len(kids))
            self.samples += 1
            await asyncio.sleep(0.001)

    async def __aenter__(self) -> Sampler:
        self._task = asyncio.ensure_future(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


# -- order and backpressure ------------------------------------------------------------


@pytest.mark.parametrize("fresh", MODES)
async def test_200_tasks_size_8_in_order_never_more_than_8_alive(fresh: bool) -> None:
    # (a closure for fresh sandboxes; warm workers need a module-level function)
    scale = 1
    fn = (lambda x: slow_square(x) * scale) if fresh else slow_square
    async with SandboxPool(8, fresh=fresh) as pool, Sampler() as sampler:
        results = [r async for r in pool.map(fn, range(200))]
    assert results == [x * x for x in range(200)]
    assert sampler.samples >= 5
    assert 2 <= sampler.peak <= 8, sampler.peak


async def test_200_fresh_tasks_through_a_spawner() -> None:
    async with (
        aiospaces.Spawner() as sp,
        SandboxPool(8, via="spawner", spawner=sp) as pool,
        Sampler(sp) as sampler,
    ):
        results = [r async for r in pool.map(slow_square, range(200))]
        with pytest.raises(ValueError, match="boom"):
            await pool.run(fail, "boom")
        with pytest.raises(TimeoutError):
            await pool.run(sleep_then, 5, 1, timeout=0.2)
        assert await pool.run(square, 7) == 49  # the pool keeps serving
    assert results == [x * x for x in range(200)]
    assert sampler.samples >= 5
    assert 2 <= sampler.peak <= 8, sampler.peak


def parent_pid() -> int:
    return os.getppid()


async def test_fresh_default_goes_through_the_spawner_when_fn_can_travel() -> None:
    async with SandboxPool(2) as pool:
        assert await pool.run(parent_pid) != os.getpid()  # the spawner's child
        here = os.getpid()
        assert await pool.run(lambda: os.getppid() + 0 * here) == here  # a closure: forked
    async with SandboxPool(2, via="fork") as pool:
        assert await pool.run(parent_pid) == os.getpid()
    with pytest.raises(ValueError, match="via must be one of"):
        SandboxPool(2, via="zygote")
    await aiospaces.stop_spawner()


async def test_gathered_runs_respect_the_size() -> None:
    async with SandboxPool(3, via="fork") as pool, Sampler() as sampler:
        t0 = time.monotonic()
        out = await asyncio.gather(*(pool.run(sleep_then, 0.2, i) for i in range(9)))
        elapsed = time.monotonic() - t0
    assert out == list(range(9))
    assert sampler.peak <= 3
    assert elapsed >= 0.55  # three waves of 0.2 s


async def test_map_takes_a_bounded_window_from_the_iterable() -> None:
    taken: list[int] = []

    def source() -> object:
        for i in range(1000):
            taken.append(i)
            yield i

    async with SandboxPool(2) as pool:
        agen = pool.map(square, source(), window=4)
        async with contextlib.aclosing(agen):
            assert await anext(agen) == 0
            assert len(taken) <= 5
    assert len(taken) <= 6


async def test_map_accepts_an_async_iterable() -> None:
    async def numbers() -> AsyncIterator[int]:
        for i in range(10):
            yield i

    async with SandboxPool(4) as pool:
        assert [r async for r in pool.map(square, numbers())] == [i * i for i in range(10)]


async def test_map_raises_the_first_failure_and_cancels_the_rest() -> None:
    def maybe_fail(x: int) -> int:
        if x == 3:
            raise ValueError("three")
        time.sleep(0.05)
        return x

    got = []
    async with SandboxPool(4) as pool:
        with pytest.raises(ValueError, match="three"):
            async for r in pool.map(maybe_fail, range(50)):
                got.append(r)
    assert got == [0, 1, 2]


async def test_break_out_of_map_leaves_nothing_running() -> None:
    async with SandboxPool(4, via="fork") as pool:
        async with contextlib.aclosing(pool.map(sleep_then, [0.01] * 3 + [30] * 20)) as it:
            async for _ in it:
                break
        assert child_pids() == set() or all(proc_state(p) is None for p in child_pids())


# -- isolation of failures -------------------------------------------------------------


@pytest.mark.parametrize("fresh", MODES)
async def test_timeouts_are_isolated(fresh: bool) -> None:
    async with SandboxPool(4, fresh=fresh) as pool:
        # Warm up first: the spawner's first task of a module imports it there.
        assert await pool.run(sleep_then, 0, -1) == -1
        calls = [pool.run(sleep_then, 30 if i % 3 == 0 else 0.01, i, timeout=0.5) for i in range(9)]
        t0 = time.monotonic()
        out = await asyncio.gather(*calls, return_exceptions=True)
        assert time.monotonic() - t0 < 10
        for i, r in enumerate(out):
            if i % 3 == 0:
                assert isinstance(r, TimeoutError), r
                assert "timeout" in str(r)
            else:
                assert r == i
        assert await pool.run(square, 5) == 25  # still serving


@pytest.mark.parametrize("fresh", MODES)
async def test_crashes_are_isolated_and_workers_replaced(fresh: bool) -> None:
    async with SandboxPool(2, fresh=fresh) as pool:
        before = await pool.run(ids)
        results = await asyncio.gather(
            pool.run(crash, "exit"),
            pool.run(square, 3),
            pool.run(crash, "segv"),
            pool.run(crash, "kill"),
            pool.run(square, 4),
            return_exceptions=True,
        )
        assert isinstance(results[0], ChildExited)
        assert results[0].returncode == 3
        assert results[1] == 9
        assert isinstance(results[2], ChildKilled)
        assert results[2].returncode == -signal.SIGSEGV
        assert isinstance(results[3], ChildKilled)
        assert results[3].signal == signal.SIGKILL
        assert results[4] == 16
        assert [await pool.run(square, i) for i in range(5)] == [0, 1, 4, 9, 16]
        after = await pool.run(ids)
        if fresh:
            assert before[0] != after[0]


@pytest.mark.parametrize("fresh", MODES)
async def test_exception_comes_back_with_remote_traceback(fresh: bool) -> None:
    async with SandboxPool(2, fresh=fresh) as pool:
        with pytest.raises(ValueError, match="nope") as info:
            await pool.run(fail, "nope")
        assert isinstance(info.value.__cause__, RemoteTraceback)
        assert "fail" in str(info.value.__cause__)


@pytest.mark.parametrize("fresh", MODES)
async def test_fn_raising_timeout_error_is_not_a_pool_timeout(fresh: bool) -> None:
    async with SandboxPool(1, fresh=fresh) as pool:
        with pytest.raises(TimeoutError, match="mine") as info:
            await pool.run(functools.partial(raise_timeout, "mine"), timeout=30)
        assert isinstance(info.value.__cause__, RemoteTraceback)


def raise_timeout(msg: str) -> None:
    raise TimeoutError(msg)


@pytest.mark.parametrize("fresh", MODES)
async def test_async_fn(fresh: bool) -> None:
    async with SandboxPool(2, fresh=fresh) as pool:
        assert await pool.run(aio_double, 21) == 42


@pytest.mark.parametrize("fresh", MODES)
async def test_tasks_run_in_their_own_session(fresh: bool) -> None:
    # kill(0, sig) in a task must not reach our process group.
    async with SandboxPool(1, fresh=fresh) as pool:
        _pid, sid, _uid = await pool.run(ids)
    assert sid != os.getsid(0)


@pytest.mark.parametrize("fresh", MODES)
async def test_cancelling_run_kills_its_sandbox(fresh: bool) -> None:
    async with SandboxPool(2, fresh=fresh, via="fork") as pool:
        task = asyncio.ensure_future(pool.run(sleep_then, 30))
        while not child_pids():  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert all(proc_state(p) is None for p in child_pids() - set())
        assert await pool.run(square, 2) == 4


async def test_closing_the_pool_kills_running_tasks() -> None:
    pool = SandboxPool(2, via="fork")
    task = asyncio.ensure_future(pool.run(sleep_then, 30))
    while not child_pids():  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    await pool.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await task
    with pytest.raises(RuntimeError, match="closed"):
        await pool.run(square, 1)
    await pool.aclose()  # idempotent


# -- warm workers ----------------------------------------------------------------------------


async def test_warm_workers_need_picklable_fn() -> None:
    async with SandboxPool(1, fresh=False) as pool:
        with pytest.raises(TypeError, match="pickle by reference"):
            await pool.run(lambda: 1)
        with pytest.raises(TypeError, match="fresh=True"):
            await pool.run(square, threading.Lock())


async def test_warm_workers_are_reused_then_recycled() -> None:
    async with SandboxPool(1, fresh=False, max_tasks_per_worker=3) as pool:
        pids = [(await pool.run(ids))[0] for _ in range(7)]
        states = [await pool.run(remember, i) for i in range(4)]
    assert pids[0] == pids[1] == pids[2] != pids[3]
    assert pids[3] == pids[4] == pids[5] != pids[6]
    assert all(proc_state(p) is None for p in pids)
    # worker state lives as long as the worker: 3 tasks, then a fresh copy
    # (the third worker ran one ids() task, then remember(0) and remember(1))
    assert states == [[0], [0, 1], [2], [2, 3]]
    assert STATE == []


async def test_warm_worker_that_died_while_idle_is_replaced() -> None:
    async with SandboxPool(1, fresh=False) as pool:
        pid = (await pool.run(ids))[0]
        os.kill(pid, signal.SIGKILL)
        while proc_state(pid) not in (None, "Z"):  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        assert await pool.run(square, 6) == 36


# -- namespaces --------------------------------------------------------------------------------


@pytest.mark.userns
@pytest.mark.parametrize("fresh", MODES)
async def test_in_user_and_pid_namespaces(fresh: bool) -> None:
    fn = (lambda x: (os.getpid(), os.getuid(), x)) if fresh else None
    async with (
        SandboxPool(4, flags=USER_PID, map_zero=True, fresh=fresh, via="fork") as pool,
        Sampler() as s,
    ):
        if fresh:
            out = [r async for r in pool.map(fn, range(40))]  # type: ignore[arg-type]
            assert out == [(1, 0, i) for i in range(40)]
        else:
            out2 = [r async for r in pool.map(square, range(40))]
            assert out2 == [i * i for i in range(40)]
            assert (await pool.run(ids))[0] == 1
    assert s.peak <= 4


@pytest.mark.userns
@pytest.mark.parametrize("fresh", MODES)
async def test_sandbox_spec(fresh: bool) -> None:
    from aiospaces.sandbox import Sandbox

    sb = Sandbox(namespaces={"user", "pid", "uts", "net"}, hostname="box")
    async with SandboxPool(2, sandbox=sb, fresh=fresh) as pool:
        assert await pool.run(os.uname) == await pool.run(os.uname)
        assert (await pool.run(os.uname)).nodename == "box"


@pytest.mark.userns
async def test_namespaced_timeouts_and_crashes() -> None:
    async with SandboxPool(2, flags=USER_PID, map_zero=True, fresh=False) as pool:
        out = await asyncio.gather(
            pool.run(sleep_then, 30, timeout=0.3),
            pool.run(crash, "segv"),
            pool.run(square, 7),
            return_exceptions=True,
        )
        assert isinstance(out[0], TimeoutError)
        assert isinstance(out[1], ChildKilled)
        assert out[2] == 49


# -- the Executor adapter --------------------------------------------------------------------


@pytest.mark.parametrize("fresh", MODES)
async def test_run_in_executor(fresh: bool) -> None:
    loop = asyncio.get_running_loop()
    async with SandboxPool(4, fresh=fresh) as pool:
        ex = pool.executor()
        assert isinstance(ex, concurrent.futures.Executor)
        results = await asyncio.gather(*(loop.run_in_executor(ex, math.factorial, i)
                                         for i in range(20)))  # fmt: skip
        assert results == [math.factorial(i) for i in range(20)]
        with pytest.raises(ValueError, match="boom"):
            await loop.run_in_executor(ex, fail, "boom")
        fut = ex.submit(pow, 2, exp=5)
        assert await asyncio.wrap_future(fut) == 32
        await ex.ashutdown()


async def test_executor_shutdown_cancel_futures() -> None:
    async with SandboxPool(1) as pool:
        ex = pool.executor()
        futs = [ex.submit(sleep_then, 0.3, i) for i in range(5)]
        await asyncio.sleep(0.1)  # the first one runs, the rest wait for the slot
        assert futs[0].running()
        assert not futs[1].running()
        ex.shutdown(wait=False, cancel_futures=True)
        with pytest.raises(RuntimeError, match="after shutdown"):
            ex.submit(square, 2)
        assert all(f.cancelled() for f in futs[1:])
        with pytest.raises(RuntimeError, match="deadlock"):
            ex.shutdown(wait=True)
        await ex.ashutdown(wait=True)
        assert futs[0].result() == 0


async def test_executor_pending_future_can_be_cancelled() -> None:
    async with SandboxPool(1) as pool:
        ex = pool.executor()
        first = ex.submit(sleep_then, 0.2, "a")
        second = ex.submit(sleep_then, 0.2, "b")
        await asyncio.sleep(0.05)
        assert second.cancel()
        assert not first.cancel()  # running: concurrent.futures cannot cancel it
        assert await asyncio.wrap_future(first) == "a"
        await ex.ashutdown()


async def test_executor_from_another_thread() -> None:
    async with SandboxPool(2) as pool:
        ex = pool.executor()

        def in_thread() -> list[int]:
            futs = [ex.submit(square, i) for i in range(6)]
            out = [f.result(timeout=60) for f in futs]
            assert list(ex.map(square, [7, 8], timeout=60)) == [49, 64]
            ex.shutdown(wait=True)
            return out

        assert await asyncio.to_thread(in_thread) == [0, 1, 4, 9, 16, 25]


async def test_executor_with_context_manager_and_closed_pool() -> None:
    pool = SandboxPool(1)
    ex: PoolExecutor
    with pool.executor() as ex:
        fut = ex.submit(sleep_then, 30)
        await asyncio.sleep(0.1)
        await pool.aclose()
        with pytest.raises(RuntimeError, match="closed"):
            await asyncio.wrap_future(fut)
    with pytest.raises(RuntimeError):
        ex.submit(square, 1)


# -- arguments -------------------------------------------------------------------------------


async def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        SandboxPool(0)
    with pytest.raises(ValueError):
        SandboxPool(2, max_tasks_per_worker=0)
    with pytest.raises(TypeError, match="spawn options"):
        SandboxPool(2, args=(1,))
    async with SandboxPool(1) as pool:
        with pytest.raises(TypeError):
            await pool.run(42)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            await pool.run(square, 1, timeout=-1)
        with pytest.raises(ValueError, match="CLONE_NEWUSER"):
            await SandboxPool(1, map_zero=True).run(square, 1)
        assert "SandboxPool open size=1" in repr(pool)


async def test_cancelling_a_map_consumer_kills_what_it_started() -> None:
    async with SandboxPool(3, via="fork") as pool:

        async def consume() -> None:
            async for _ in pool.map(sleep_then, [30] * 10):
                pass

        task = asyncio.ensure_future(consume())
        while len(child_pids()) < 3:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert all(proc_state(p) is None for p in child_pids())
        assert await pool.run(square, 3) == 9


async def test_cancelling_a_map_consumer_kills_its_spawner_children() -> None:
    async with aiospaces.Spawner() as sp, SandboxPool(3, spawner=sp) as pool:

        async def consume() -> None:
            async for _ in pool.map(sleep_then, [30] * 10):
                pass

        task = asyncio.ensure_future(consume())
        while len(children_of(sp.pid)) < 3:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert all(proc_state(p) in (None, "Z") for p in children_of(sp.pid))
        assert await pool.run(square, 3) == 9


async def test_result_format_json_for_untrusted_tasks() -> None:
    from aiospaces import ChildError
    from aiospaces.pool import SandboxPool

    async with SandboxPool(2, result_format="json") as pool:
        assert await pool.run(sorted, [3, 1, 2]) == [1, 2, 3]
        with pytest.raises(ChildError, match="could not be encoded as json"):
            await pool.run(object)
    with pytest.raises(ValueError, match="warm workers send pickled results"):
        SandboxPool(2, fresh=False, result_format="json")
