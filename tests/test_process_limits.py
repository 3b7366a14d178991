"""Exec mode with a Sandbox's limits: OOM and timeout are reported on the Process."""

from __future__ import annotations

import pytest
from limits_helpers import cgroup_leftovers, no_cgroup_leftovers  # noqa: F401

from aiospaces import RunTimeout, Sandbox, create_process, run
from aiospaces.cgroups import available

SUPPORT = available()
MEMORY = pytest.mark.skipif(
    "memory_max" not in SUPPORT.limits, reason=f"no cgroup memory limit here ({SUPPORT.describe()})"
)
HOG = "import sys; b = []\nwhile True: b.append(bytearray(16 << 20))"


@MEMORY
async def test_oom_killed_program_is_reported_as_oom() -> None:
    sb = Sandbox(namespaces={"user", "pid"}, memory_max="64M", memory_swap_max=0)
    import sys

    proc = await create_process([sys.executable, "-c", HOG], sandbox=sb)
    rc = await proc.wait()
    assert rc == -9
    assert proc.oom_killed
    assert proc.kill_reason == "oom"
    assert cgroup_leftovers() == []


@pytest.mark.userns
async def test_sandbox_timeout_raises_run_timeout_and_kills_everything() -> None:
    sb = Sandbox(namespaces={"user", "pid"}, timeout=0.3)
    with pytest.raises(RunTimeout) as info:
        await run(
            ["sh", "-c", "sleep 100 & sleep 100; echo never"], sandbox=sb, capture_output=True
        )
    assert info.value.timeout == pytest.approx(0.3)
    # the conftest's leak check proves nothing of the sandbox survived


@pytest.mark.userns
async def test_plain_exit_has_no_kill_reason() -> None:
    proc = await create_process(["true"], sandbox=Sandbox(namespaces={"user"}))
    assert await proc.wait() == 0
    assert proc.kill_reason is None and not proc.oom_killed and not proc.timed_out


@pytest.mark.userns
@pytest.mark.parametrize("as_pid_1", [False, True])
async def test_regression_rlimit_as_applies_to_the_program_not_the_init(as_pid_1: bool) -> None:
    # RLIMIT_AS set on the pid namespace's init (a copy of this interpreter,
    # far larger than the limit) made its posix_spawn fail with ENOMEM, seen
    # as "Cannot allocate memory: 'sh'" for Sandbox.untrusted() unprivileged.
    sb = Sandbox(namespaces={"user", "pid"}, rlimits={"AS": 64 << 20, "NOFILE": 32})
    done = await run(
        ["sh", "-c", "ulimit -v; ulimit -n; echo $$"],
        sandbox=sb,
        as_pid_1=as_pid_1,
        capture_output=True,
        check=True,
    )
    assert done.stdout.split() == [b"65536", b"32", b"1" if as_pid_1 else b"2"]
    with pytest.raises(FileNotFoundError):
        await run(["aiospaces-no-such-program"], sandbox=sb, as_pid_1=as_pid_1)
