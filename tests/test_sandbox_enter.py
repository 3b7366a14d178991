"""Entering a running child's namespaces: Sandbox(enter=...), compat.Inject, compat.setns."""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from helpers import ns_ids

from aiospaces import Child, spawn
from aiospaces.sandbox import Bind, Proc, Sandbox, Tmpfs

FORKS = [0]
os.register_at_fork(before=lambda: FORKS.__setitem__(0, FORKS[0] + 1))

MARKER = "/tmp/first-was-here"


def _first_body(ready_w: int) -> None:
    Path(MARKER).write_text("first")
    os.write(ready_w, b"r")
    os.close(ready_w)
    signal.pause()


@pytest.fixture
async def first() -> AsyncIterator[Child[None]]:
    """A sandbox with its own user/pid/mnt/net/uts namespaces, waiting to be entered."""
    r, w = os.pipe()
    sb = Sandbox(
        namespaces={"user", "pid"},
        hostname="first",
        mounts=(Bind("/", readonly=True), Tmpfs("/tmp"), Proc()),
        network="loopback",
    )
    try:
        child = await spawn(_first_body, args=(w,), pass_fds=(w,), sandbox=sb)
    finally:
        os.close(w)
    try:
        assert os.read(r, 1) == b"r"
    finally:
        os.close(r)
    async with child:
        yield child


def _look_around() -> dict[str, object]:
    return {
        "hostname": socket.gethostname(),
        "marker": Path(MARKER).read_text() if os.path.exists(MARKER) else None,
        "ifaces": sorted(n for _, n in socket.if_nameindex()),
        "pid": os.getpid(),
        "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
        "ns": ns_ids(),
        "uid": os.getuid(),
    }


@pytest.mark.userns
async def test_enter_sees_the_first_childs_world(first: Child[None]) -> None:
    theirs = ns_ids(first.pid)
    child = await spawn(_look_around, sandbox=Sandbox(enter=first))
    got = await child.result()
    assert got["hostname"] == "first"
    assert got["marker"] == "first"  # its private /tmp, through its mount namespace
    assert got["ifaces"] == ["lo"]  # its network namespace
    assert got["uid"] == 0
    ns = got["ns"]
    assert isinstance(ns, dict)
    for name in ("user", "mnt", "net", "uts", "pid"):
        assert ns[name] == theirs[name], name
    # It really lives in the pid namespace: its /proc (the first's) lists it.
    assert got["pid"] != 1 and got["pid"] in got["pids"]  # type: ignore[operator]
    assert 1 in got["pids"]  # type: ignore[operator]
    assert child.returncode == 0


@pytest.mark.userns
async def test_enter_some_namespaces_only(first: Child[None]) -> None:
    sb = Sandbox(enter=first, join={"user", "uts"})
    got = await (await spawn(_look_around, sandbox=sb)).result()
    assert got["hostname"] == "first"
    assert got["marker"] is None  # still the host's mount namespace
    mine = ns_ids()
    assert got["ns"]["net"] == mine["net"]  # type: ignore[index]


@pytest.mark.userns
async def test_enter_and_make_new_namespaces(first: Child[None]) -> None:
    # Join the first's user/pid/net, with a new mount namespace of our own.
    sb = Sandbox(
        enter=first,
        join={"user", "pid", "net"},
        mounts=(Bind("/", readonly=True), Proc()),
    )
    got = await (await spawn(_look_around, sandbox=sb)).result()
    assert got["ifaces"] == ["lo"]
    assert got["marker"] is None  # the host's /tmp, not the first's
    assert 1 in got["pids"] and got["pid"] in got["pids"]  # type: ignore[operator]


@pytest.mark.userns
async def test_entered_child_relays_exit_status_and_signals(first: Child[None]) -> None:
    sb = Sandbox(enter=first)
    child = await spawn(lambda: os._exit(7), sandbox=sb)
    assert await child.wait() == 7

    r, w = os.pipe()

    def waits() -> None:
        os.write(w, b"r")
        signal.pause()

    child = await spawn(waits, pass_fds=(w,), sandbox=sb)
    os.close(w)
    try:
        assert os.read(r, 1) == b"r"
    finally:
        os.close(r)
    child.terminate()
    assert await child.wait() == -signal.SIGTERM


@pytest.mark.userns
async def test_entering_a_dead_target_raises_before_any_clone() -> None:
    done = await spawn(os.getpid, sandbox=Sandbox(namespaces={"user", "uts"}, hostname="gone"))
    await done.wait()
    before = FORKS[0]
    with pytest.raises(ProcessLookupError, match="has exited"):
        await spawn(os.getpid, sandbox=Sandbox(enter=done))
    # A pid that names no process.
    with pytest.raises(ProcessLookupError, match="no process"):
        await spawn(os.getpid, sandbox=Sandbox(enter=2**22 + 12345))
    assert FORKS[0] == before


@pytest.mark.userns
async def test_entering_an_exited_but_unreaped_target() -> None:
    r, w = os.pipe()
    target = await spawn(os.read, args=(r, 1), pass_fds=(r,), sandbox=Sandbox(namespaces={"user"}))
    os.close(r)
    os.write(w, b"x")  # it returns and exits; nothing has reaped it yet
    os.close(w)
    import select

    select.select([target.pidfd], [], [], 5)
    with pytest.raises(ProcessLookupError, match="has exited"):
        await spawn(os.getpid, sandbox=Sandbox(enter=target))
    await target.wait()


@pytest.mark.userns
async def test_enter_by_pid(first: Child[None]) -> None:
    got = await (await spawn(socket.gethostname, sandbox=Sandbox(enter=first.pid))).result()
    assert got == "first"


@pytest.mark.userns
async def test_a_spec_outliving_its_target(first: Child[None]) -> None:
    sb = Sandbox(enter=first, join={"user", "uts"})
    with sb.compile() as compiled:
        names = [s.name for s in compiled.child_steps]
        assert names == ["setns user,uts", "no_new_privs", "capabilities"]
        assert compiled.pass_fds and compiled.flags == 0
    first.kill()
    await first.wait()
    with pytest.raises(ProcessLookupError, match="has exited"):
        await spawn(os.getpid, sandbox=sb)


def test_setns_step_reports_a_dead_target() -> None:
    from aiospaces._enter import SetNs

    # The child-side step, run here on a pidfd of an exited (reaped) process.
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    fd = os.pidfd_open(pid)
    os.waitpid(pid, 0)
    with pytest.raises(OSError, match="the target process has exited"):
        SetNs(fd, 0x04000000, "setns uts").run()  # CLONE_NEWUTS; it closes fd


# --- compat: pyspaces' Inject and setns -----------------------------------------------


@pytest.mark.userns
async def test_compat_inject(first: Child[None], tmp_path: Path) -> None:
    from aiospaces.compat import Inject

    out = tmp_path / "out"

    def target(path: str) -> None:
        with open(path, "w") as f:  # the host's path: the mount namespace is not joined
            f.write(f"{socket.gethostname()} {os.getpid() != 1}")

    p = Inject(first.pid, target, (str(out),), newuser=True, uts=True, pid=True)
    p.start()
    p.join(30)
    assert p.exitcode == 0
    assert out.read_text() == "first True"


@pytest.mark.root
async def test_compat_setns_enters_and_restores(first: Child[None]) -> None:
    from aiospaces.compat import setns

    target = first.pid

    def inside() -> tuple[str, str, str]:
        before = socket.gethostname()
        with setns(target, 0, "/proc", "uts"):
            during = socket.gethostname()
        return before, during, socket.gethostname()

    # In a child: a test must not move the test runner's own namespaces.
    before, during, after = await (await spawn(inside)).result()
    assert during == "first"
    assert before == after != "first"
