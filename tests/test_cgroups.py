"""cgroup limits with real limits: OOM, a fork bomb, a CPU quota; both cgroup versions.

CI (this host) mounts the v1 controllers and a v2 hierarchy without them:
the v1 tests run as root; the v2 path runs as root without controllers
(grouping, CLONE_INTO_CGROUP, cgroup.kill, cpu.stat) and with limits only
where a delegated v2 subtree offers the controllers (skipped otherwise).
Unprivileged, a cgroup limit must give the clear error.
"""

from __future__ import annotations

import asyncio
import os
import time

import pytest
from limits_helpers import alive, cgroup_leftovers, no_cgroup_leftovers  # noqa: F401

from aiospaces import ChildKilled, Sandbox, spawn
from aiospaces.cgroups import CgroupUnavailable, available

SUPPORT = available()
V1 = pytest.mark.skipif(
    not {"memory_max", "pids_max", "cpu_max"} <= SUPPORT.limits or SUPPORT.version != 1,
    reason=f"needs cgroup v1 memory/pids/cpu controllers writable here ({SUPPORT.describe()})",
)
V2_GROUP = pytest.mark.skipif(
    SUPPORT.v2_base is None, reason=f"no writable cgroup v2 subtree ({SUPPORT.describe()})"
)
V2_LIMITS = pytest.mark.skipif(
    not {"memory", "pids"} <= SUPPORT.v2_controllers,
    reason="needs a delegated cgroup v2 subtree with memory and pids "
    "(systemd-run --user --scope -p Delegate=yes)",
)
ANY_LIMITS = pytest.mark.skipif(
    not {"memory_max", "pids_max"} <= SUPPORT.limits, reason=SUPPORT.describe()
)


def test_available_reports_what_works() -> None:
    s = available()
    assert s is available()  # probed once
    assert s.limits <= {"memory_max", "memory_swap_max", "pids_max", "cpu_max"}
    assert s.version in (1, 2, None)
    assert isinstance(s.describe(), str) and s.describe()
    if s.version is None:
        assert not s.limits


# --- unprivileged: the clear error ------------------------------------------------------------


@pytest.mark.skipif(bool(SUPPORT.limits), reason="this host can enforce cgroup limits")
async def test_a_limit_nothing_can_enforce_gives_the_clear_error() -> None:
    with pytest.raises(CgroupUnavailable) as info:
        await spawn(os.getpid, sandbox=Sandbox(namespaces={"user"}, memory_max="64M"))
    err = info.value
    assert err.step == "cgroup"
    assert "memory_max cannot be enforced" in str(err)
    assert err.hint is not None and "systemd-run --user --scope -p Delegate=yes" in err.hint


@pytest.mark.unprivileged
async def test_unprivileged_cgroup_limits_need_delegation() -> None:
    if SUPPORT.v2_base is not None and SUPPORT.limits:
        pytest.skip("this user has a delegated cgroup v2 subtree")
    with pytest.raises(CgroupUnavailable, match="pids_max cannot be enforced"):
        Sandbox(namespaces={"user"}, pids_max=8).compile()


# --- OOM -----------------------------------------------------------------------------------


def _all_exist(paths: tuple[str, ...]) -> bool:
    return all(os.path.isdir(p) for p in paths)


def _any_exist(paths: tuple[str, ...]) -> bool:
    return any(os.path.exists(p) for p in paths)


def _members(path: str) -> list[int]:
    with open(path + "/cgroup.procs") as f:
        return [int(p) for p in f.read().split()]


def _hog() -> int:
    chunks = []
    for _ in range(64):
        chunks.append(bytearray(16 << 20))  # touched: bytearray zero-fills
    return len(chunks)


async def _oom_case(sb: Sandbox) -> None:
    child = await spawn(_hog, sandbox=sb)
    paths = child.cgroup.paths if child.cgroup else ()
    assert paths and _all_exist(paths)
    with pytest.raises(ChildKilled) as info:
        await child.result()
    assert info.value.reason == "oom"
    assert child.oom_killed
    assert not _any_exist(paths)  # gone once wait() returned
    assert os.getpid() and (await (await spawn(os.getpid)).result())  # the parent is fine


@V1
@pytest.mark.root
async def test_oom_is_reported_v1() -> None:
    await _oom_case(Sandbox(namespaces={"pid"}, memory_max="64M", memory_swap_max=0, cgroup="v1"))


@V2_LIMITS
async def test_oom_is_reported_v2() -> None:
    await _oom_case(
        Sandbox(namespaces={"user", "pid"}, memory_max="64M", memory_swap_max=0, cgroup="v2")
    )


# --- fork bomb -------------------------------------------------------------------------------


def _fork_bomb() -> int:
    made = 0
    try:
        while True:
            if os.fork() == 0:
                time.sleep(60)
                os._exit(0)
            made += 1
    except BlockingIOError:  # EAGAIN: pids.max reached
        return made


async def _fork_bomb_case(sb: Sandbox) -> None:
    child = await spawn(_fork_bomb, sandbox=sb)
    made = await child.result()
    assert 20 <= made < 32  # the child itself and its interpreter's threads count too
    assert child.cgroup is not None and child.cgroup.removed


@V1
@pytest.mark.root
async def test_fork_bomb_is_contained_v1_with_a_pid_namespace() -> None:
    await _fork_bomb_case(Sandbox(namespaces={"pid"}, pids_max=32, cgroup="v1"))


@V1
@pytest.mark.root
async def test_fork_bomb_without_a_pid_namespace_is_killed_through_its_cgroup() -> None:
    # The forked children outlive the child: the guard kills them via the cgroup.
    await _fork_bomb_case(Sandbox(pids_max=32, cgroup="v1"))


@V2_LIMITS
async def test_fork_bomb_is_contained_v2() -> None:
    await _fork_bomb_case(Sandbox(namespaces={"user", "pid"}, pids_max=32, cgroup="v2"))


# --- CPU quota ---------------------------------------------------------------------------------


def _burn() -> None:
    while True:
        pass


async def _cpu_case(sb: Sandbox) -> float:
    async with await spawn(_burn, sandbox=sb) as child:
        cg = child.cgroup
        assert cg is not None
        await asyncio.sleep(0.2)
        u0, t0 = cg.cpu_usage_ns(), time.monotonic()
        await asyncio.sleep(2.0)
        u1, t1 = cg.cpu_usage_ns(), time.monotonic()
        assert u0 is not None and u1 is not None
    return (u1 - u0) / 1e9 / (t1 - t0)


@V1
@pytest.mark.root
async def test_cpu_max_holds_a_burner_near_its_quota_v1() -> None:
    share = await _cpu_case(Sandbox(namespaces={"pid"}, cpu_max=0.2, cgroup="v1"))
    # 20% of a CPU; generous: the host's 2 cores are shared with other work.
    assert 0.08 <= share <= 0.3, share


@pytest.mark.skipif("cpu" not in SUPPORT.v2_controllers, reason="no cpu controller in cgroup v2")
async def test_cpu_max_holds_a_burner_near_its_quota_v2() -> None:
    share = await _cpu_case(Sandbox(namespaces={"user", "pid"}, cpu_max=0.2, cgroup="v2"))
    assert 0.08 <= share <= 0.3, share


# --- the v2 path without controllers (grouping, CLONE_INTO_CGROUP, cgroup.kill) ----------------


def _my_cgroups() -> str:
    with open("/proc/self/cgroup") as f:
        return f.read()


@V2_GROUP
@pytest.mark.root
async def test_v2_clone_into_cgroup_and_cleanup() -> None:
    child = await spawn(_my_cgroups, sandbox=Sandbox(cgroup="v2"))
    assert child.cgroup is not None and child.cgroup.version == 2
    leaf = child.cgroup.leaf
    text = await child.result()
    assert any(line.startswith("0::") and line.endswith("/" + leaf) for line in text.splitlines())
    assert child.cgroup.removed and not cgroup_leftovers()


def _spread(w: int) -> None:
    for _ in range(3):
        if os.fork() == 0:
            time.sleep(60)
            os._exit(0)
    os.write(w, b"x")
    time.sleep(60)


async def _timeout_kills_everything(sb: Sandbox) -> None:
    r, w = os.pipe()
    try:
        child = await spawn(_spread, args=(w,), sandbox=sb, pass_fds=(w,))
        os.close(w)
        w = -1
        assert os.read(r, 1) == b"x"
        assert child.cgroup is not None
        members = _members(child.cgroup.paths[0])
        assert len(members) == 4
        with pytest.raises(TimeoutError):
            await child.result()
        assert not any(alive(p) for p in members)
        assert child.cgroup.removed
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


@V2_GROUP
@pytest.mark.root
async def test_v2_timeout_without_a_pid_namespace_kills_the_cgroup() -> None:
    await _timeout_kills_everything(Sandbox(cgroup="v2", timeout=0.5))


@V1
@pytest.mark.root
async def test_v1_timeout_without_a_pid_namespace_kills_the_cgroup() -> None:
    await _timeout_kills_everything(Sandbox(cgroup="v1", timeout=0.5))


@V1
@pytest.mark.root
async def test_v1_child_is_in_its_cgroups_before_it_runs() -> None:
    child = await spawn(_my_cgroups, sandbox=Sandbox(pids_max=16, memory_max="128M", cgroup="v1"))
    assert child.cgroup is not None
    leaf = child.cgroup.leaf
    text = await child.result()
    lines = [ln for ln in text.splitlines() if ln.endswith("/" + leaf)]
    assert {ln.split(":")[1] for ln in lines} >= {"memory", "pids"}


@ANY_LIMITS
@pytest.mark.root
async def test_a_failed_spawn_removes_its_cgroup() -> None:
    from aiospaces import SpawnError

    with pytest.raises(SpawnError):
        await spawn(os.getpid, sandbox=Sandbox(pids_max=8, cwd="/nonexistent-dir"))
    assert not cgroup_leftovers()
