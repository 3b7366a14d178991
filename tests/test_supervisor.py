"""Supervisor: restart policies, backoff, give-up, graceful stop, cancellation.

Real children that crash, ignore SIGTERM or run as PID 1; process state is
read from /proc, never from the supervisor's own bookkeeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
from collections.abc import Callable

import pytest
from helpers import proc_state

from aiospaces import CLONE_NEWPID, CLONE_NEWUSER
from aiospaces.supervisor import (
    ChildStatus,
    Event,
    Exited,
    GaveUp,
    Restarting,
    Started,
    Stopped,
    Supervisor,
    SupervisorGaveUp,
)

FAST = (0.01, 0.05, 2.0)  # short backoff for tests


def exits(code: int, after: float = 0.0) -> Callable[[], None]:
    def fn() -> None:
        time.sleep(after)
        os._exit(code)

    return fn


def dies_by(sig: int, after: float = 0.0) -> Callable[[], None]:
    def fn() -> None:
        time.sleep(after)
        if sig != signal.SIGKILL:
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
        time.sleep(10)

    return fn


def sleeps(seconds: float = 60.0) -> None:
    time.sleep(seconds)


def ignores_sigterm() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(60)


def gone(pid: int) -> bool:
    return proc_state(pid) is None


def kinds(events: list[Event]) -> list[str]:
    return [type(e).__name__ for e in events]


async def collect(sup: Supervisor) -> list[Event]:
    return [e async for e in sup.events()]


# -- restart policies ----------------------------------------------------------------


async def test_on_failure_restarts_exit_code_then_gives_up_report() -> None:
    async with Supervisor(on_give_up="report") as sup:
        await sup.start(exits(3), name="crash", max_restarts=2, backoff=FAST)
        await sup.wait()
        st = sup.status()["crash"]
        assert st.state == "gave-up"
        assert st.restarts == 2
        assert st.returncode == 3
        assert st.pid is None
        assert isinstance(sup.gave_up, SupervisorGaveUp)
    events = [e async for e in sup.events()]
    assert kinds(events) == [
        "Started", "Exited", "Restarting",
        "Started", "Exited", "Restarting",
        "Started", "Exited", "GaveUp",
    ]  # fmt: skip
    assert [e.returncode for e in events if isinstance(e, Exited)] == [3, 3, 3]
    assert [e.attempt for e in events if isinstance(e, Started)] == [0, 1, 2]
    assert [e.attempt for e in events if isinstance(e, Restarting)] == [1, 2]
    pids = [e.pid for e in events if isinstance(e, Started)]
    assert len(set(pids)) == 3
    assert all(gone(p) for p in pids)
    assert all(e.name == "crash" for e in events)
    last = events[-1]
    assert isinstance(last, GaveUp)
    assert (last.restarts, last.returncode) == (2, 3)


@pytest.mark.parametrize("sig", [signal.SIGSEGV, signal.SIGKILL, signal.SIGABRT])
async def test_on_failure_restarts_after_signal_death(sig: int) -> None:
    async with Supervisor(on_give_up="report") as sup:
        await sup.start(dies_by(sig), name="sig", max_restarts=1, backoff=FAST)
        await sup.wait()
    exited = [e async for e in sup.events() if isinstance(e, Exited)]
    assert [e.returncode for e in exited] == [-sig, -sig]


async def test_on_failure_does_not_restart_a_clean_exit() -> None:
    async with Supervisor() as sup:
        await sup.start(exits(0), name="ok")
        await sup.wait()
        assert sup.status()["ok"] == ChildStatus("ok", "exited", None, 0, 0, None)
    assert kinds(await collect(sup)) == ["Started", "Exited"]


async def test_never_does_not_restart_a_failure() -> None:
    async with Supervisor() as sup:
        await sup.start(exits(7), name="once", restart="never")
        await sup.wait("once")
        assert sup.status()["once"].state == "exited"
        assert sup.status()["once"].returncode == 7
    assert kinds(await collect(sup)) == ["Started", "Exited"]


async def test_always_restarts_a_clean_exit() -> None:
    async with Supervisor(on_give_up="report") as sup:
        await sup.start(exits(0), name="loop", restart="always", max_restarts=3, backoff=FAST)
        await sup.wait()
    events = await collect(sup)
    assert [e.returncode for e in events if isinstance(e, Exited)] == [0, 0, 0, 0]
    assert isinstance(events[-1], GaveUp)


async def test_fn_exception_is_a_failure() -> None:
    def boom() -> None:
        raise RuntimeError("boom")

    async with Supervisor(on_give_up="report") as sup:
        await sup.start(boom, name="boom", max_restarts=0)
        await sup.wait()
    events = await collect(sup)
    assert kinds(events) == ["Started", "Exited", "GaveUp"]
    assert events[1].returncode == 1  # type: ignore[attr-defined]


async def test_args_and_kwargs_reach_the_child() -> None:
    async with Supervisor() as sup:
        await sup.start(lambda a, b: os._exit(a + b), name="sum", args=(2,), kwargs={"b": 3},
                        restart="never")  # fmt: skip
        await sup.wait()
        assert sup.status()["sum"].returncode == 5


# -- backoff and intensity -------------------------------------------------------------------


async def test_backoff_grows_exponentially_with_observed_gaps() -> None:
    async with Supervisor(on_give_up="report") as sup:
        await sup.start(exits(1), name="b", max_restarts=4, backoff=(0.05, 0.15, 2.0), jitter=0)
        await sup.wait()
    events = await collect(sup)
    delays = [e.delay for e in events if isinstance(e, Restarting)]
    assert delays == pytest.approx([0.05, 0.1, 0.15, 0.15])
    # Each restart starts no earlier than its delay after the exit.
    for i, ev in enumerate(events):
        if isinstance(ev, Restarting):
            exited, started = events[i - 1], events[i + 1]
            assert isinstance(exited, Exited)
            assert isinstance(started, Started)
            assert started.monotonic - exited.monotonic >= ev.delay * 0.95
            assert abs(started.wall - started.monotonic - (exited.wall - exited.monotonic)) < 0.5


async def test_jitter_stays_within_bounds() -> None:
    async with Supervisor(on_give_up="report") as sup:
        await sup.start(exits(1), name="j", max_restarts=5, backoff=(0.02, 1, 1), jitter=0.5)
        await sup.wait()
    delays = [e.delay for e in await collect(sup) if isinstance(e, Restarting)]
    assert len(delays) == 5
    assert all(0.01 - 1e-9 <= d <= 0.02 for d in delays)


async def test_restarts_outside_the_period_do_not_count() -> None:
    # Each run lasts 0.15 s; within=0.2 s: at most one restart is in the
    # window at any time, so max_restarts=1 is never exceeded.
    async with Supervisor() as sup:
        await sup.start(exits(1, after=0.15), name="slow", max_restarts=1, within=0.2,
                        backoff=(0.06, 0.06, 1), jitter=0)  # fmt: skip
        await asyncio.sleep(1.2)
        st = sup.status()["slow"]
        assert st.state in ("running", "backoff", "starting")
        assert st.restarts >= 3
    assert sup.gave_up is None


async def test_give_up_raises_out_of_the_block() -> None:
    t0 = time.monotonic()
    with pytest.raises(SupervisorGaveUp) as info:
        async with Supervisor() as sup:
            await sup.start(sleeps, name="steady")
            await sup.start(exits(2), name="bad", max_restarts=2, backoff=FAST)
            await asyncio.sleep(30)
    assert time.monotonic() - t0 < 10
    assert info.value.name == "bad"
    assert info.value.returncode == 2
    st = sup.status()
    assert st["bad"].state == "gave-up"
    assert st["steady"].state == "stopped"
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_give_up_when_the_body_swallowed_the_cancellation() -> None:
    # The body catches the CancelledError that the give-up sent it and ends
    # normally: the give-up must still come out of the block.
    with pytest.raises(SupervisorGaveUp):
        async with Supervisor() as sup:
            await sup.start(exits(2), name="bad", max_restarts=0)
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(30)
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_external_cancel_wins_over_give_up() -> None:
    async def body() -> None:
        async with Supervisor() as sup:
            await sup.start(exits(2), name="bad", max_restarts=0)
            await asyncio.sleep(30)

    task = asyncio.ensure_future(body())
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises((asyncio.CancelledError, SupervisorGaveUp)):
        await task


# -- stopping -------------------------------------------------------------------------------


async def test_stop_a_child_that_ignores_sigterm_kills_it_after_the_grace() -> None:
    async with Supervisor() as sup:
        pid = await sup.start(ignores_sigterm, name="stubborn", stop_grace=0.4)
        await asyncio.sleep(0.2)  # let it install SIG_IGN
        t0 = time.monotonic()
        rc = await sup.stop("stubborn")
        elapsed = time.monotonic() - t0
        assert rc == -signal.SIGKILL
        assert 0.35 <= elapsed < 5
        assert gone(pid)
        assert sup.status()["stubborn"].state == "stopped"
    assert kinds(await collect(sup)) == ["Started", "Exited", "Stopped"]


async def test_stop_a_cooperative_child_is_quick() -> None:
    async with Supervisor() as sup:
        pid = await sup.start(sleeps, name="nice", stop_grace=30)
        t0 = time.monotonic()
        assert await sup.stop("nice") == -signal.SIGTERM
        assert time.monotonic() - t0 < 5
        assert gone(pid)


async def test_custom_stop_signal() -> None:
    async with Supervisor() as sup:
        await sup.start(sleeps, name="hup", stop_signal=signal.SIGHUP)
        assert await sup.stop("hup") == -signal.SIGHUP


@pytest.mark.userns
async def test_pid_1_child_stops_with_sigterm() -> None:
    async with Supervisor() as sup:
        pid = await sup.start(sleeps, name="init", flags=CLONE_NEWUSER | CLONE_NEWPID,
                              map_zero=True, stop_grace=30)  # fmt: skip
        t0 = time.monotonic()
        assert await sup.stop("init") == 128 + signal.SIGTERM
        assert time.monotonic() - t0 < 5
        assert gone(pid)


async def test_stop_during_backoff_cancels_the_restart() -> None:
    async with Supervisor() as sup:
        await sup.start(exits(1), name="b", backoff=(30, 30, 1), jitter=0)
        while sup.status()["b"].state != "backoff":  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        t0 = time.monotonic()
        assert await sup.stop("b") == 1
        assert time.monotonic() - t0 < 2
    assert kinds(await collect(sup)) == ["Started", "Exited", "Restarting", "Stopped"]


async def test_stop_racing_with_restarts() -> None:
    rng = random.Random(7)
    for i in range(6):
        async with Supervisor() as sup:
            await sup.start(exits(1, after=0.005), name="r", restart="always",
                            max_restarts=1000, backoff=(0, 0, 1))  # fmt: skip
            await asyncio.sleep(rng.uniform(0, 0.15))
            await sup.stop("r")
            assert sup.status()["r"].state == "stopped"
            assert sup.status()["r"].pid is None
        events = await collect(sup)
        assert isinstance(events[-1], Stopped), (i, kinds(events))
        started = [e.pid for e in events if isinstance(e, Started)]
        assert all(gone(p) for p in started)


async def test_stop_is_not_cancelled_with_its_caller() -> None:
    async with Supervisor() as sup:
        pid = await sup.start(ignores_sigterm, name="s", stop_grace=0.3)
        await asyncio.sleep(0.1)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await sup.stop("s")
        await sup.wait("s")
        assert sup.status()["s"].state == "stopped"
        assert gone(pid)


async def test_leaving_the_block_stops_children_in_parallel() -> None:
    pids = []
    async with Supervisor() as sup:
        for i in range(3):
            pids.append(await sup.start(ignores_sigterm, name=f"w{i}", stop_grace=0.5))
        await asyncio.sleep(0.2)
        t0 = time.monotonic()
    elapsed = time.monotonic() - t0
    assert 0.45 <= elapsed < 1.4  # one grace, not three
    assert all(gone(p) for p in pids)
    assert {s.state for s in sup.status().values()} == {"stopped"}


async def test_leaving_the_block_by_exception_stops_everything() -> None:
    pids: list[int] = []
    with pytest.raises(ZeroDivisionError):
        async with Supervisor() as sup:
            pids.append(await sup.start(sleeps, name="a"))
            pids.append(await sup.start(sleeps, name="b"))
            1 / 0  # noqa: B018
    assert all(gone(p) for p in pids)


async def test_cancelling_the_enclosing_task_leaves_no_child() -> None:
    pids: list[int] = []
    entered = asyncio.Event()

    async def service() -> None:
        async with Supervisor() as sup:
            pids.append(await sup.start(sleeps, name="a"))
            pids.append(await sup.start(ignores_sigterm, name="b", stop_grace=0.3))
            pids.append(await sup.start(exits(1, 0.01), name="c", restart="always",
                                        max_restarts=10_000, backoff=(0, 0, 1)))  # fmt: skip
            entered.set()
            await asyncio.sleep(60)

    task = asyncio.ensure_future(service())
    await entered.wait()
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert all(gone(p) for p in pids)
    from conftest import child_pids

    assert child_pids() == set() or all(proc_state(p) is None for p in child_pids())


async def test_second_cancellation_kills_at_once() -> None:
    pids: list[int] = []
    entered = asyncio.Event()

    async def service() -> None:
        async with Supervisor() as sup:
            pids.append(await sup.start(ignores_sigterm, name="b", stop_grace=30))
            entered.set()
            await asyncio.sleep(60)

    task = asyncio.ensure_future(service())
    await entered.wait()
    await asyncio.sleep(0.1)
    task.cancel()
    await asyncio.sleep(0.2)  # now in __aexit__, waiting for the 30 s grace
    assert not task.done()
    t0 = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - t0 < 5
    assert all(gone(p) for p in pids)


async def test_timeout_around_the_block_becomes_timeout_error() -> None:
    pids: list[int] = []
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3), Supervisor() as sup:
            pids.append(await sup.start(sleeps, name="a"))
            await asyncio.sleep(30)
    assert all(gone(p) for p in pids)


# -- events and status ---------------------------------------------------------------------


async def test_events_several_consumers_and_end_of_stream() -> None:
    got: dict[str, list[Event]] = {"a": [], "b": []}

    async def consume(key: str, stream: object) -> None:
        async for e in stream:  # type: ignore[attr-defined]
            got[key].append(e)

    async with Supervisor(on_give_up="report") as sup:
        tasks = [
            asyncio.ensure_future(consume("a", sup.events())),
            asyncio.ensure_future(consume("b", sup.events(replay=False))),
        ]
        await asyncio.sleep(0)
        await sup.start(exits(4), name="x", max_restarts=1, backoff=FAST)
        await sup.wait()
    await asyncio.gather(*tasks)  # both streams end when the supervisor closes
    assert kinds(got["a"]) == ["Started", "Exited", "Restarting", "Started", "Exited", "GaveUp"]
    assert got["a"] == got["b"]
    ts = [e.monotonic for e in got["a"]]
    assert ts == sorted(ts)


async def test_slow_consumer_drops_oldest() -> None:
    async with Supervisor(on_give_up="report", event_buffer=2) as sup:
        stream = sup.events()
        await sup.start(exits(4), name="x", max_restarts=2, backoff=FAST)
        await sup.wait()
    rest = [e async for e in stream]
    assert kinds(rest) == ["Exited", "GaveUp"]
    assert stream.dropped == 7


async def test_status_reports_pid_and_uptime() -> None:
    async with Supervisor() as sup:
        pid = await sup.start(sleeps, name="s")
        await asyncio.sleep(0.1)
        st = sup.status()["s"]
        assert st.pid == pid
        assert st.state == "running"
        assert st.uptime is not None and st.uptime >= 0.09
        assert st.restarts == 0
        assert st.returncode is None
        assert proc_state(pid) in ("S", "R")
        assert "running=1" in repr(sup)


# -- arguments and errors --------------------------------------------------------------------


async def test_bad_arguments() -> None:
    async with Supervisor() as sup:
        with pytest.raises(TypeError):
            await sup.start(42, name="x")  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            await sup.start(sleeps, name="x", restart="sometimes")  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            await sup.start(sleeps, name="x", max_restarts=-1)
        with pytest.raises(ValueError):
            await sup.start(sleeps, name="x", backoff=(2, 1, 2))
        with pytest.raises(ValueError):
            await sup.start(sleeps, name="x", stop_signal=999)
        with pytest.raises(ValueError):
            await sup.start([], name="x")
        with pytest.raises(TypeError):
            await sup.start(["true"], name="x", args=(1,))
        with pytest.raises(ValueError, match="CLONE_NEWUSER"):
            await sup.start(sleeps, name="x", map_zero=True)
        with pytest.raises(KeyError):
            await sup.stop("nobody")
        await sup.start(sleeps, name="dup")
        with pytest.raises(ValueError, match="already"):
            await sup.start(sleeps, name="dup")
        assert list(sup.status()) == ["dup"]
    with pytest.raises(RuntimeError):
        await sup.start(sleeps, name="late")
    with pytest.raises(RuntimeError, match="async with"):
        await Supervisor().start(sleeps, name="x")


async def test_name_can_be_reused_after_it_ended() -> None:
    async with Supervisor() as sup:
        await sup.start(exits(0), name="n")
        await sup.wait("n")
        pid = await sup.start(sleeps, name="n")
        assert sup.status()["n"].pid == pid


# -- exec mode -------------------------------------------------------------------------------


def _has_exec_mode() -> bool:
    try:
        from aiospaces import _process  # noqa: F401
    except ImportError:
        return False
    return True


exec_mode = pytest.mark.skipif(not _has_exec_mode(), reason="exec mode not in this build yet")


@exec_mode
async def test_exec_mode_restarts_a_program() -> None:
    async with Supervisor(on_give_up="report") as sup:
        await sup.start(["sh", "-c", "exit 5"], name="sh", max_restarts=1, backoff=FAST)
        await sup.wait()
    events = await collect(sup)
    assert [e.returncode for e in events if isinstance(e, Exited)] == [5, 5]


@exec_mode
async def test_exec_mode_stop_ignoring_sigterm() -> None:
    async with Supervisor() as sup:
        pid = await sup.start(["sh", "-c", "trap '' TERM; sleep 30 & wait; sleep 30"],
                              name="sh", stop_grace=0.3)  # fmt: skip
        await asyncio.sleep(0.2)
        assert await sup.stop("sh") == -signal.SIGKILL
        assert gone(pid)


@exec_mode
@pytest.mark.userns
async def test_exec_mode_in_namespaces_stops_with_sigterm() -> None:
    async with Supervisor() as sup:
        await sup.start(["sleep", "30"], name="s", flags=CLONE_NEWUSER | CLONE_NEWPID,
                        map_zero=True, stop_grace=10)  # fmt: skip
        t0 = time.monotonic()
        rc = await sup.stop("s")
        assert rc in (-signal.SIGTERM, 128 + signal.SIGTERM)
        assert time.monotonic() - t0 < 5


@exec_mode
async def test_exec_mode_missing_program_raises_at_start() -> None:
    async with Supervisor() as sup:
        with pytest.raises(FileNotFoundError):
            await sup.start(["/nonexistent/prog"], name="x")
        assert sup.status() == {}


# -- Sandbox ---------------------------------------------------------------------------------


@pytest.mark.userns
async def test_sandbox_spec_for_fn_and_exec_targets() -> None:
    from aiospaces import Sandbox

    sb = Sandbox(namespaces={"user", "pid", "uts"}, hostname="supervised")

    def check_hostname() -> None:
        os._exit(0 if os.uname().nodename == "supervised" and os.getpid() == 1 else 9)

    async with Supervisor() as sup:
        await sup.start(check_hostname, name="fn", sandbox=sb, restart="never")
        await sup.start(["sh", "-c", 'test "$(hostname)" = supervised'], name="exec",
                        sandbox=sb, restart="never")  # fmt: skip
        await sup.wait()
        assert sup.status()["fn"].returncode == 0
        assert sup.status()["exec"].returncode == 0
