"""rlimits, the sandbox timeout, and how deaths by a limit are reported (real limits)."""

from __future__ import annotations

import os
import resource
import signal
import time

import pytest
from limits_helpers import alive, no_cgroup_leftovers  # noqa: F401  (autouse fixture)

from aiospaces import ChildKilled, Sandbox, spawn
from aiospaces.limits import parse_size

# --- validation (no process) ---------------------------------------------------------


def test_rlimits_by_name_and_pairs() -> None:
    sb = Sandbox(rlimits={"nofile": 64, "RLIMIT_AS": (1 << 30, None), "CPU": 2, "CORE": 0})
    got = {r.limit_name: (r.soft, r.hard) for r in sb.rlimits}  # type: ignore[union-attr]
    assert got == {
        "NOFILE": (64, 64),
        "AS": (1 << 30, resource.RLIM_INFINITY),
        "CPU": (2, 3),  # SIGXCPU first, SIGKILL one second later
        "CORE": (0, 0),
    }
    assert hash(sb) == hash(Sandbox(rlimits={"NOFILE": 1}))  # rlimits do not take part


@pytest.mark.parametrize(
    ("value", "exc", "match"),
    [
        ({"NOPE": 1}, ValueError, "unknown limit 'NOPE'"),
        ({"NOFILE": -1}, ValueError, "negative"),
        ({"NOFILE": (5, 4)}, ValueError, "soft limit 5 is above the hard limit 4"),
        ({"NOFILE": "many"}, TypeError, "a limit is an int"),
        ({"NOFILE": (1, 2, 3)}, ValueError, r"\(soft, hard\)"),
        ([("NOFILE", 1)], TypeError, "rlimits must be a mapping"),
    ],
)
def test_bad_rlimits(value: object, exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):
        Sandbox(rlimits=value)  # type: ignore[arg-type]


def test_limit_fields_are_validated() -> None:
    assert parse_size("1.5G", "x") == 3 << 29
    assert Sandbox(memory_max="64M").memory_max == 64 << 20
    with pytest.raises(ValueError, match="below 1 MiB"):
        Sandbox(memory_max=4096)
    with pytest.raises(ValueError, match="not a size"):
        Sandbox(memory_max="lots")
    with pytest.raises(ValueError, match="pids_max must be at least 1"):
        Sandbox(pids_max=0)
    with pytest.raises(ValueError, match="fraction of one CPU"):
        Sandbox(cpu_max=0)
    with pytest.raises(ValueError, match="fraction of one CPU"):
        Sandbox(cpu_max=(os.cpu_count() or 1) + 1)
    with pytest.raises(ValueError, match="timeout must be positive"):
        Sandbox(timeout=0)
    with pytest.raises(ValueError, match="cgroup=False contradicts"):
        Sandbox(cgroup=False, pids_max=3)
    with pytest.raises(ValueError, match="cgroup must be"):
        Sandbox(cgroup="v3")  # type: ignore[arg-type]


def test_raising_a_hard_limit_needs_cap_sys_resource() -> None:
    from aiospaces.hardening import CAP_SYS_RESOURCE, has_cap

    if has_cap(CAP_SYS_RESOURCE):
        pytest.skip("this process holds CAP_SYS_RESOURCE")
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with pytest.raises(PermissionError, match=r"NOFILE hard limit .* CAP_SYS_RESOURCE"):
        Sandbox(rlimits={"NOFILE": hard + 1}).compile()


# --- rlimits take effect -----------------------------------------------------------------


def _open_until_full() -> tuple[tuple[int, int], int]:
    fds = []
    try:
        while True:
            fds.append(os.open("/dev/null", os.O_RDONLY))
    except OSError as exc:
        assert exc.errno == 24  # EMFILE
    finally:
        for fd in fds:
            os.close(fd)
    return resource.getrlimit(resource.RLIMIT_NOFILE), max(fds, default=0)


async def test_rlimit_nofile_takes_effect() -> None:
    child = await spawn(_open_until_full, sandbox=Sandbox(rlimits={"NOFILE": 32}))
    limits, highest = await child.result()
    assert limits == (32, 32)
    assert highest == 31


def _burn() -> None:
    while True:
        pass


async def test_rlimit_cpu_death_is_a_cpu_limit_death() -> None:
    t0 = time.monotonic()
    child = await spawn(_burn, sandbox=Sandbox(rlimits={"CPU": 1}))
    with pytest.raises(ChildKilled) as info:
        await child.result()
    assert info.value.signal == signal.SIGXCPU
    assert info.value.reason == "cpu-limit"
    assert time.monotonic() - t0 >= 0.9


@pytest.mark.userns
async def test_rlimit_cpu_in_a_pid_namespace_dies_at_the_hard_limit() -> None:
    # PID 1 of a namespace ignores SIGXCPU (no handler): SIGKILL at the hard limit.
    child = await spawn(_burn, sandbox=Sandbox(namespaces={"user", "pid"}, rlimits={"CPU": 1}))
    with pytest.raises(ChildKilled) as info:
        await child.result()
    assert info.value.signal == signal.SIGKILL
    assert info.value.reason == "cpu-limit"


@pytest.mark.userns
async def test_a_parent_sigkill_is_not_a_cpu_limit_death() -> None:
    child = await spawn(_burn, sandbox=Sandbox(namespaces={"user", "pid"}, rlimits={"CPU": 5}))
    child.kill()
    with pytest.raises(ChildKilled) as info:
        await child.result()
    assert info.value.reason == "signal"


def test_rlimits_come_after_the_setup_and_before_the_fences() -> None:
    sb = Sandbox(namespaces={"user", "uts"}, hostname="h", rlimits={"NOFILE": 16, "CORE": 0})
    with sb.compile() as c:
        names = [s.name for s in c.child_steps]
    assert names == ["hostname", "rlimit CORE", "rlimit NOFILE", "no_new_privs", "capabilities"]


# --- timeout ---------------------------------------------------------------------------------


def _tree_then_sleep(n: int, w: int) -> None:
    for _ in range(n):
        if os.fork() == 0:
            time.sleep(60)
            os._exit(0)
    os.write(w, b"x")
    time.sleep(60)


def _grandchildren(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


@pytest.mark.userns
async def test_timeout_kills_the_whole_sandbox_and_raises_timeout_error() -> None:
    r, w = os.pipe()
    try:
        child = await spawn(
            _tree_then_sleep,
            args=(3, w),
            sandbox=Sandbox(namespaces={"user", "pid"}, timeout=0.5),
            pass_fds=(w,),
        )
        os.close(w)
        w = -1
        assert os.read(r, 1) == b"x"
        kids = _grandchildren(child.pid)
        assert len(kids) == 3
        t0 = time.monotonic()
        with pytest.raises(TimeoutError, match=r"timed out after 0.5 s") as info:
            await child.result()
        assert time.monotonic() - t0 < 5
        assert child.timed_out and child.returncode == -signal.SIGKILL
        assert isinstance(info.value.__cause__, ChildKilled)
        assert info.value.__cause__.reason == "timeout"
        assert not any(alive(p) for p in kids)
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


async def test_a_child_done_before_its_timeout_is_not_timed_out() -> None:
    child = await spawn(os.getpid, sandbox=Sandbox(timeout=5))
    assert await child.result() == child.pid
    assert not child.timed_out and not child.oom_killed and child.cgroup is None
