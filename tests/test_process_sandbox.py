"""create_process()/run() with sandbox=: the Sandbox's steps in exec mode."""

from __future__ import annotations

import os
import socket

import pytest

from aiospaces import Bind, Dev, Proc, Sandbox, SpawnError, Tmpfs, run


@pytest.mark.userns
async def test_run_in_a_sandbox_sees_its_own_root_proc_and_hostname() -> None:
    sb = Sandbox(
        namespaces={"user", "pid", "mnt", "uts", "net"},
        hostname="box",
        mounts=(Bind("/", "/", readonly=True), Tmpfs("/tmp"), Proc(), Dev()),
        network="loopback",
    )
    script = (
        "hostname; ls /proc | grep -c '^[0-9]'; touch /usr/x 2>/dev/null || echo ro; "
        "echo hi > /tmp/aiospaces-sandbox-probe && cat /tmp/aiospaces-sandbox-probe; "
        "echo ok > /dev/null && echo devnull"
    )
    done = await run(["sh", "-c", script], sandbox=sb, capture_output=True, check=True)
    lines = done.stdout.decode().split()
    assert lines[0] == "box"
    assert int(lines[1]) <= 4  # the init, sh, ls and grep only
    assert lines[2:] == ["ro", "hi", "devnull"]
    assert socket.gethostname() != "box"
    assert "aiospaces-sandbox-probe" not in os.listdir("/tmp")


@pytest.mark.userns
async def test_sandbox_env_and_cwd() -> None:
    sb = Sandbox(namespaces={"user"}, env={"GREETING": "hej"}, clear_env=True, cwd="/usr")
    done = await run(["/bin/sh", "-c", "echo $GREETING; pwd; env"], sandbox=sb, capture_output=True)
    out = done.stdout.decode().split()
    assert out[:2] == ["hej", "/usr"]
    names = {line.split("=", 1)[0] for line in out[2:]}
    assert "GREETING" in names
    assert not names & {"HOME", "PATH", "USER"}  # clear_env: nothing of ours


@pytest.mark.userns
async def test_missing_bind_source_raises_before_any_process() -> None:
    with pytest.raises(FileNotFoundError):
        await run(
            ["true"],
            sandbox=Sandbox(namespaces={"user", "mnt"}, mounts=(Bind("/nonexistent-xyz", "/x"),)),
        )


@pytest.mark.userns
async def test_failing_sandbox_step_is_spawn_error() -> None:
    sb = Sandbox(
        namespaces={"user", "mnt"}, mounts=(Bind("/", "/", readonly=True),), cwd="/nonexistent-dir"
    )
    with pytest.raises(SpawnError) as info:
        await run(["true"], sandbox=sb)
    assert "nonexistent-dir" in str(info.value)


async def test_sandbox_with_map_arguments_is_refused() -> None:
    with pytest.raises(ValueError, match="put uid_map"):
        await run(["true"], sandbox=Sandbox(namespaces={"user"}), map_zero=True)
    with pytest.raises(TypeError, match="sandbox must be a Sandbox"):
        await run(["true"], sandbox={"user": True})  # type: ignore[arg-type]
