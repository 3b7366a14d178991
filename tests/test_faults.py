"""Fault injection for the spawn handshake: real kills, real limits.

Each test checks the error is clear; the autouse leak check (conftest)
checks that no process, zombie or fd is left behind.
"""

from __future__ import annotations

import asyncio
import errno
import os
import resource
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from aiospaces import (
    CLONE_NEWPID,
    CLONE_NEWUSER,
    ChildKilled,
    ChildLost,
    SpawnError,
    _child,
    _launch,
    spawn,
)

USER_PID = CLONE_NEWUSER | CLONE_NEWPID


def _noop(sock: int) -> int:
    return 0


class KillSelf:
    """A child-side step that dies by SIGKILL (a crash during setup)."""

    name = "kill-self"

    def run(self) -> None:
        os.kill(os.getpid(), signal.SIGKILL)


class Boom:
    name = "mount /nowhere"

    def run(self) -> None:
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", "/nowhere")


@pytest.mark.userns
async def test_child_killed_before_the_maps_are_written() -> None:
    # An at-fork hook runs in the child before anything of ours.
    armed = [True]

    def die() -> None:
        if armed[0]:
            os.kill(os.getpid(), signal.SIGKILL)

    os.register_at_fork(after_in_child=die)
    try:
        # Whether the parent notices before it releases the child (writing
        # the maps of a dead process, or sending "go" to it, fails: a
        # SpawnError naming the step) or after (the child counts as started
        # and result() says how it died) is a race; both must be clear.
        try:
            # No pid namespace: its init could not SIGKILL itself.
            child = await spawn(os.getpid, CLONE_NEWUSER, map_zero=True)
        except SpawnError as exc:
            assert exc.step in ("uid_map", "setgroups", "gid_map", "child setup"), exc
            assert "SIGKILL" in str(exc) or exc.errno
        else:
            with pytest.raises(ChildKilled) as killed:
                await child.result()
            assert killed.value.signal == signal.SIGKILL
    finally:
        armed[0] = False


@pytest.mark.userns
async def test_child_killed_between_maps_and_go() -> None:
    async def kill(pid: int) -> None:
        os.kill(pid, signal.SIGKILL)
        await asyncio.sleep(0.01)

    plan = _child.ChildPlan(steps=(), pid1_handlers=True)
    from aiospaces.idmap import plan_maps

    with pytest.raises(SpawnError, match="killed by SIGKILL") as info:
        core = await _launch.launch(
            USER_PID,
            plan,
            _noop,
            maps=plan_maps(None, None, True),
            parent_steps=[kill],
            started_on="R",
        )
        await core.kill_and_reap()
    assert info.value.step == "child setup"


@pytest.mark.userns
async def test_child_killed_during_child_side_setup() -> None:
    plan = _child.ChildPlan(steps=(KillSelf(),))
    from aiospaces.idmap import plan_maps

    # No pid namespace: a namespace's init cannot SIGKILL itself.
    with pytest.raises(SpawnError, match="killed by SIGKILL"):
        await _launch.launch(
            CLONE_NEWUSER, plan, _noop, maps=plan_maps(None, None, True), started_on="R"
        )


async def test_failing_setup_step_is_named() -> None:
    plan = _child.ChildPlan(steps=(Boom(),))
    with pytest.raises(SpawnError) as info:
        await _launch.launch(0, plan, _noop, started_on="R")
    assert info.value.step == "mount /nowhere"
    assert info.value.errno == errno.ENOENT
    assert info.value.filename == "/nowhere"
    assert "mount /nowhere" in str(info.value)


async def test_parent_step_failure_kills_and_reaps() -> None:
    async def fail(pid: int) -> None:
        raise SpawnError(errno.EPERM, "nope", step="veth")

    with pytest.raises(SpawnError, match="veth"):
        await _launch.launch(0, _child.ChildPlan(), _noop, parent_steps=[fail])


@pytest.mark.parametrize("spare", [0, 1, 2, 3])
async def test_fd_limit_nearly_used_up(spare: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    used = max(int(f) for f in os.listdir("/proc/self/fd")) + 1
    resource.setrlimit(resource.RLIMIT_NOFILE, (used + spare, hard))
    try:
        child = await spawn(os.getpid)
    except OSError as exc:
        assert exc.errno == errno.EMFILE, exc
    else:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        assert await child.result() > 0
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.unprivileged
def test_nproc_limit_gives_spawn_error() -> None:
    # Root is exempt from RLIMIT_NPROC, so this runs in the unprivileged pass.
    code = textwrap.dedent(
        """
        import asyncio, os, resource, time
        import aiospaces
        async def main():
            resource.setrlimit(resource.RLIMIT_NPROC, (1, 1))
            try:
                await aiospaces.spawn(os.getpid)
            except aiospaces.SpawnError as e:
                print("SpawnError", e.errno, e.step, e.hint)
        asyncio.run(main())
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60
    )
    assert out.stdout.startswith(f"SpawnError {errno.EAGAIN} clone3"), out
    assert "RLIMIT_NPROC" in out.stdout


async def test_waitpid_minus_one_elsewhere_is_reported_not_hung() -> None:
    child = await spawn(time.sleep, args=(0.05,))
    # Some other part of the program reaps "any child" (blocking, so our
    # watcher cannot get there first).
    pid, _ = os.waitpid(-1, 0)
    assert pid == child.pid
    with pytest.raises(ChildLost, match="reaped by someone else"):
        await asyncio.wait_for(child.wait(), 5)


@pytest.mark.allow_leaks
def test_supervisor_sigkilled_with_50_sandboxes_all_gone_within_a_second() -> None:
    code = textwrap.dedent(
        """
        import asyncio, os, sys, time
        import aiospaces
        async def main():
            kids = [await aiospaces.spawn(time.sleep, %d, args=(60,), map_zero=%s)
                    for _ in range(50)]
            print(" ".join(str(k.pid) for k in kids), flush=True)
            await asyncio.sleep(60)
        asyncio.run(main())
        """
    )
    from helpers import proc_state, run_python

    flags = USER_PID if _userns() else 0
    proc = run_python(code % (flags, bool(flags)))
    assert proc.stdout is not None and proc.stderr is not None
    pids = [int(p) for p in proc.stdout.readline().split()]
    assert len(pids) == 50
    proc.kill()
    proc.wait()
    proc.stdout.close()
    proc.stderr.close()
    deadline = time.monotonic() + 1.0
    alive = pids
    while time.monotonic() < deadline and alive:
        alive = [p for p in pids if proc_state(p) not in (None, "Z")]
        time.sleep(0.01)
    assert alive == []


def _userns() -> bool:
    from conftest import USERNS

    return USERNS
