"""The spawner process (``spawn(..., via="spawner")``): same contract as fork
mode for functions that can travel, a clear error for those that cannot,
and nothing left behind when the spawner or the supervisor dies."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time

import pytest
from helpers import ns_ids, proc_state, run_python

import aiospaces
from aiospaces import (
    CLONE_NEWNS,
    CLONE_NEWPID,
    CLONE_NEWUSER,
    CLONE_NEWUTS,
    ChildExited,
    ChildKilled,
    ChildLost,
    Sandbox,
    Spawner,
    SpawnError,
    SpawnerUnsuitable,
    spawn,
)
from aiospaces import _spawn as spawn_mod

USER_PID = CLONE_NEWUSER | CLONE_NEWPID


@pytest.fixture(params=["c", "python"])
def spawner_loop(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with the spawner's C request loop and with its Python fallback."""
    if request.param == "python":
        monkeypatch.setenv("AIOSPACES_SPAWNER_LOOP", "python")
    return str(request.param)


# Module-level targets: the spawner imports this module to find them.
def ident() -> tuple[int, int, int, str]:
    return os.getpid(), os.getppid(), os.getuid(), os.uname().nodename


def add(a: int, b: int = 0) -> int:
    return a + b


def fail() -> None:
    raise KeyError("from the child")


def exit_with(code: int) -> None:
    os._exit(code)


def kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def env_and_cwd(name: str) -> tuple[str | None, str]:
    return os.environ.get(name), os.getcwd()


def sleep_then(seconds: float, value: int = 0) -> int:
    time.sleep(seconds)
    return value


async def async_value() -> str:
    await asyncio.sleep(0)
    return "async ok"


def my_namespaces() -> dict[str, int]:
    return ns_ids()


def rss_kib(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(x.split()[1]) for x in f if x.startswith("VmRSS:"))


async def test_value_args_and_parent(spawner_loop: str) -> None:
    async with Spawner() as sp:
        child = await spawn(add, args=(40,), kwargs={"b": 2}, spawner=sp)
        assert await child.result() == 42
        assert child.returncode == 0
        assert child.pidfd == -1
        child = await spawn(ident, spawner=sp)
        pid, ppid, _, _ = await child.result()
        # The spawner's child, not ours: that is what keeps our size out of it.
        assert (pid, ppid) == (child.pid, sp.pid)
        assert ppid != os.getpid()


@pytest.mark.userns
async def test_namespaces_and_maps(spawner_loop: str) -> None:
    child = await spawn(ident, USER_PID | CLONE_NEWUTS, map_zero=True, via="spawner")
    assert (await child.result())[:3] == (1, 0, 0)
    child = await spawn(my_namespaces, USER_PID | CLONE_NEWNS, map_zero=True, via="spawner")
    inside, here = await child.result(), ns_ids()
    assert all(inside[ns] != here[ns] for ns in ("user", "pid", "mnt"))
    assert inside["net"] == here["net"]


async def test_exceptions_exits_and_signals(spawner_loop: str) -> None:
    with pytest.raises(KeyError, match="from the child"):
        await (await spawn(fail, via="spawner")).result()
    with pytest.raises(ChildExited) as exited:
        await (await spawn(exit_with, args=(7,), via="spawner")).result()
    assert exited.value.returncode == 7
    with pytest.raises(ChildKilled) as killed:
        await (await spawn(kill_self, via="spawner")).result()
    assert killed.value.signal == signal.SIGKILL
    assert await (await spawn(async_value, via="spawner")).result() == "async ok"


@pytest.mark.userns
async def test_signals_through_the_pidfd(spawner_loop: str) -> None:
    child = await spawn(sleep_then, USER_PID, args=(30,), map_zero=True, via="spawner")
    child.terminate()  # PID 1 of its namespace: the exit handler gives 143
    assert await child.wait() == 143
    child = await spawn(sleep_then, args=(30,), via="spawner")
    child.kill()
    assert await child.wait() == -signal.SIGKILL
    with pytest.raises(ProcessLookupError):
        child.kill()


async def test_environment_and_cwd_follow_the_parent(
    tmp_path: os.PathLike[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    async with Spawner() as sp:
        assert await (await spawn(env_and_cwd, args=("AIOSPACES_T",), spawner=sp)).result() == (
            None,
            os.getcwd(),
        )
        # Changed after the spawner started: the child still sees ours.
        monkeypatch.setenv("AIOSPACES_T", "yes")
        monkeypatch.chdir(tmp_path)
        got = await (await spawn(env_and_cwd, args=("AIOSPACES_T",), spawner=sp)).result()
        assert got == ("yes", str(tmp_path))


@pytest.mark.parametrize(
    ("fn", "kwargs", "match"),
    [
        (lambda: 1, {}, "cannot be pickled by reference"),
        (add, {"args": (threading.Lock(),)}, "args/kwargs"),
        (add, {"args": (1,), "pass_fds": (0,)}, "pass_fds"),
        (add, {"args": (b"x" * (2 << 20),)}, "over the spawner's"),
    ],
)
async def test_what_cannot_travel_is_refused_before_any_process(
    fn: object, kwargs: dict[str, object], match: str
) -> None:
    before = set(os.listdir("/proc"))
    with pytest.raises(SpawnerUnsuitable, match=match):
        await spawn(fn, via="spawner", **kwargs)  # type: ignore[call-overload, arg-type]
    assert not any(
        p.isdigit() and proc_state(int(p)) is not None and _ppid(int(p)) == os.getpid()
        for p in set(os.listdir("/proc")) - before
    )


def test_main_functions_are_refused() -> None:
    proc = run_python(
        """
        import asyncio, aiospaces
        def f(): return 1
        async def main():
            try:
                await aiospaces.spawn(f, via="spawner")
            except aiospaces.SpawnerUnsuitable as exc:
                print("refused:", exc)
            child = await aiospaces.spawn(f)  # auto: a small parent forks
            print("auto:", await child.result())
        asyncio.run(main())
        """
    )
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "refused: fn: 'f' is defined in __main__" in out
    assert "auto: 1" in out


async def test_auto_uses_the_spawner_once_the_parent_is_large(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(spawn_mod, "_rss_cache", [0.0, 0])
    child = await spawn(ident)
    assert (await child.result())[1] == os.getpid()  # small: forked by us
    monkeypatch.setattr(spawn_mod, "AUTO_SPAWNER_RSS", 1)  # every parent is "large"
    monkeypatch.setattr(spawn_mod, "_rss_cache", [0.0, 0])
    try:
        child = await spawn(ident)
        assert (await child.result())[1] != os.getpid()

        # A closure cannot travel: auto still works, by forking.
        def local() -> int:
            return os.getppid()

        child = await spawn(local)
        assert await child.result() == os.getpid()
    finally:
        await aiospaces.stop_spawner()


async def test_auto_forks_what_cannot_travel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spawn_mod, "AUTO_SPAWNER_RSS", 1)
    monkeypatch.setattr(spawn_mod, "_rss_cache", [0.0, 0])
    big = b"x" * (2 << 20)
    try:
        child = await spawn(len, args=(big,))  # too large to send: forked
        assert await child.result() == len(big)
        assert (await (await spawn(ident)).result())[1] != os.getpid()  # small: spawner
    finally:
        await aiospaces.stop_spawner()


async def test_a_spawner_that_cannot_start_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "executable", "/bin/false")
    t0 = time.monotonic()
    with pytest.raises(SpawnError, match="before it was ready"):
        async with Spawner():
            pass
    assert time.monotonic() - t0 < 10


async def test_invalid_combinations() -> None:
    with pytest.raises(ValueError, match="via must be one of"):
        await spawn(ident, via="zygote")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="spawner must be a Spawner"):
        await spawn(ident, spawner=object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="contradict"):
        await spawn(ident, via="fork", spawner=Spawner())


async def test_cancelled_spawn_leaves_nothing(spawner_loop: str) -> None:
    async with Spawner() as sp:
        for delay in (0, 0.0005, 0.001, 0.003):
            task = asyncio.ensure_future(spawn(sleep_then, args=(30,), spawner=sp))
            await asyncio.sleep(delay)
            task.cancel()
            try:
                child = await task
            except asyncio.CancelledError:
                continue
            child.kill()
            await child.wait()


async def test_closing_the_spawner_kills_its_children(spawner_loop: str) -> None:
    sp = await Spawner().start()
    kids = [await spawn(sleep_then, args=(30,), spawner=sp) for _ in range(5)]
    await sp.aclose()
    assert [await k.wait() for k in kids] == [-signal.SIGKILL] * 5
    assert proc_state(sp.pid) is None
    with pytest.raises(SpawnError, match="closed"):
        await spawn(ident, spawner=sp)


async def test_a_dead_spawner_fails_cleanly(spawner_loop: str) -> None:
    sp = await Spawner().start()
    # Eight, killed right after the last spawn: the last ones may not have run
    # a single instruction yet (a regression test for a child that set its
    # PDEATHSIG only after the spawner had died, and lived on).
    kids = [await spawn(sleep_then, args=(30,), spawner=sp) for _ in range(8)]
    os.kill(sp.pid, signal.SIGKILL)
    # The kids die with it (PDEATHSIG); their statuses died with it too.
    for k in kids:
        with pytest.raises(ChildLost):
            await asyncio.wait_for(k.wait(), 10)
    assert all(proc_state(k.pid) in (None, "Z") for k in kids)
    with pytest.raises((SpawnError, RuntimeError)):
        await spawn(ident, spawner=sp)
    await sp.aclose()


@pytest.mark.userns
async def test_sandbox_through_the_spawner(spawner_loop: str) -> None:
    box = Sandbox(namespaces={"user", "pid"}, hostname="via-spawner", map_zero=True)
    child = await spawn(ident, sandbox=box, via="spawner")
    assert (await child.result())[2:] == (0, "via-spawner")


async def test_spawner_stays_small() -> None:
    # Each resident page of the spawner is copied into every child it forks:
    # it must not carry the supervisor's modules (asyncio, the whole package).
    # (fn's own module is imported there: os.getpid's is built in.)
    async with Spawner() as sp:
        await (await spawn(os.getpid, spawner=sp)).result()
        spawner_kib = rss_kib(sp.pid)
        assert "asyncio" not in _modules_of(sp.pid)
    assert spawner_kib < rss_kib()


def _modules_of(pid: int) -> str:
    # The spawner maps the C extensions it imported: _asyncio would show.
    with open(f"/proc/{pid}/maps") as f:
        return f.read()


def _ppid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        return 0


def test_closed_loop_spawners_are_stopped_at_exit() -> None:
    proc = run_python(
        """
        import asyncio, os, aiospaces
        async def main():
            child = await aiospaces.spawn(os.getpid, via="spawner")
            await child.result()
            print(aiospaces._spawner.default_spawner().pid, flush=True)
        asyncio.run(main())
        """
    )
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert proc_state(int(out.split()[0])) is None
    assert "Traceback" not in err, err
