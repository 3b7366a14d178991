"""The handshake shared by fn mode and exec mode.

::

    parent                                  child (after clone3)
    socketpair (CLOEXEC)                    PDEATHSIG; close parent's end; read "go"
    clone3(flags|CLONE_PIDFD) → pid, pidfd
    close child's end
    await parent-side steps (id maps) ─ go ─▶ reset signals, close fds, steps
    await R frame (fn) / R then EOF (exec)  ◀─ R / E frames
    pidfd readable → waitid → returncode

Any failure or cancellation in the parent at any await kills the child
through its pidfd, waits until it is reaped, closes every fd, and re-raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import pickle
import signal
import socket
import sys
import warnings
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

from . import _child, _frames
from ._errors import ChildLost, SpawnError
from ._linux import clone_child
from ._spawner import RelayedExit
from ._watcher import Channel, ExitWatch
from .idmap import MapPlan, write_maps, write_maps_async

if TYPE_CHECKING:
    from ._spawner import Spawner

ParentStep = Callable[[int], Awaitable[None]]
"""A parent-side setup step: ``await step(pid)`` before the child's "go"."""

StartedOn = Literal["go", "R", "EOF"]
"""When the parent counts the child as started: right after sending "go"
(nothing in the child's setup can fail), on its ``R`` frame (fn mode with
setup steps), or on ``R`` then EOF of the close-on-exec channel (exec)."""


def _flush_stdio() -> None:
    # The child is a copy: unflushed parent output would be written twice.
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.flush()


def rebuild_setup_error(rec: dict[str, object]) -> OSError:
    """Turn a child's ``E`` record into the exception the caller sees."""
    err = _frames.errno_of(rec)
    # The C exec path (aiospaces._fastexec) sends no message: strerror's.
    msg = str(rec.get("msg") or "") or (os.strerror(err) if err else "")
    step = str(rec.get("step") or "child setup")
    filename = rec.get("filename")
    fname = filename if isinstance(filename, str) else None
    if step == "execve":
        # As subprocess does: FileNotFoundError / PermissionError / ...
        return OSError(err, os.strerror(err) if err else msg, fname)
    if not rec.get("errno"):
        msg = f"{rec.get('type', 'Exception')}: {msg}"
    return SpawnError(err if rec.get("errno") else 0, msg, fname, step=step)


class Launched:
    """A cloned child and the parent's watch over it (internal)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: int,
        started_on: StartedOn,
        exit_watch: Callable[..., ExitWatch] = ExitWatch,
    ) -> None:
        self.loop = loop
        self.pid = 0
        self.returncode: int | None = None
        self.lost = False
        self.started_on = started_on
        self.saw_running = False
        self.setup_error: BaseException | None = None
        self.result_frames: list[_frames.Frame] = []
        self.protocol_error: Exception | None = None
        self.truncated = False
        # Called once the child is reaped, before ``done`` resolves (a
        # sandbox's guard: OOM counters, cgroup removal). See limits.py.
        self.on_reaped: list[Callable[[int | None], None]] = []
        self.sent_kill = False  # the parent sent SIGKILL (not a limit)
        self.started: asyncio.Future[None] = loop.create_future()
        self.done: asyncio.Future[None] = loop.create_future()
        self.exit = exit_watch(loop, self._on_exit)
        self.channel = Channel(loop, sock, self._on_frame, self._on_eof)

    def attach(self, pid: int, pidfd: int) -> None:
        """The clone happened: own the child's pidfd (watched from :meth:`go`)."""
        self.pid = pid
        self.exit.arm(pid, pidfd)

    def go(self) -> None:
        """Release the child, then watch its pidfd.

        In this order because the child waits for "go": what the parent does
        before sending it is on the critical path of every spawn.
        """
        self.channel.send(_frames.GO)
        self.exit.watch()

    # -- frames -------------------------------------------------------------
    def _on_frame(self, frame: _frames.Frame) -> None:
        if frame.kind == "R":
            self.saw_running = True
            if self.started_on == "R":
                self._set_started()
        elif frame.kind == "E":
            try:
                self.setup_error = rebuild_setup_error(_frames.decode_record(frame.payload))
            except _frames.ProtocolError as exc:
                self.protocol_error = exc
            self._fail_start()
        else:
            self.result_frames.append(frame)

    def _on_eof(self) -> None:
        if self.channel.error is not None and self.protocol_error is None:
            self.protocol_error = self.channel.error
        if self.channel.partial:  # EOF in the middle of a frame
            self.truncated = True
        if self.started_on == "EOF" and self.saw_running and self.setup_error is None:
            self._set_started()
        elif self.started.done():
            pass
        elif self.setup_error is None and self.protocol_error is None and self.returncode is None:
            # The child went away without a word: its exit status says more
            # than "EOF", so fail the start from _on_exit.
            self.exit.watch()
        else:
            self._fail_start()

    def _on_exit(self, rc: int | None) -> None:
        self.returncode = rc
        self.lost = rc is None
        # Everything the child wrote is in the socket by now (its fds are
        # closed before the pidfd turns readable); anything still missing
        # would come from a grandchild holding the child's end: stop waiting.
        self.channel.drain()
        if not self.channel.closed:
            self.truncated = self.channel.partial
            self.channel.close()
            self._on_eof()
        if not self.started.done():
            self._fail_start()
        for hook in self.on_reaped:
            try:
                hook(rc)
            except Exception as exc:  # a hook must not break the reaping
                self.loop.call_exception_handler(
                    {"message": "aiospaces: an on_reaped hook failed", "exception": exc}
                )
        if not self.done.done():
            self.done.set_result(None)

    def _set_started(self) -> None:
        if not self.started.done():
            self.started.set_result(None)

    def _fail_start(self) -> None:
        if self.started.done():
            return
        self.started.set_exception(self._start_error())
        # Retrieved by spawn(); mark it so an abandoned handshake never logs.
        self.started.exception()

    def _start_error(self) -> BaseException:
        if self.setup_error is not None:
            return self.setup_error
        if self.protocol_error is not None:
            return SpawnError(errno.EPROTO, str(self.protocol_error), step="handshake")
        if self.returncode is None and not self.done.done() and not self.lost:
            return SpawnError(
                errno.ECHILD, "the child closed its channel before it started", step="handshake"
            )
        if self.lost:
            return ChildLost(self.pid)
        return SpawnError(
            errno.ECHILD,
            f"the child {describe_status(self.returncode)} before it started",
            step="child setup",
        )

    # -- control ------------------------------------------------------------
    @property
    def reaped(self) -> bool:
        return self.done.done()

    def send_signal(self, sig: int) -> None:
        fd = self.exit.pidfd
        if fd < 0:
            raise ProcessLookupError(f"process {self.pid} has already been reaped")
        if sig == signal.SIGKILL:
            self.sent_kill = True
        signal.pidfd_send_signal(fd, sig)

    async def kill_and_reap(self) -> None:
        """SIGKILL, then wait until reaped — even if cancelled meanwhile."""
        with contextlib.suppress(ProcessLookupError):
            self.send_signal(signal.SIGKILL)
        self.exit.watch()
        cancelled = 0
        while not self.done.done():
            try:
                await asyncio.shield(self.done)
            except asyncio.CancelledError:
                cancelled += 1
                if self.loop.is_closed():  # pragma: no cover - defensive
                    break
        if cancelled:
            raise asyncio.CancelledError

    def close_now(self) -> None:
        """Synchronous last resort (loop gone): kill, reap blocking, close."""
        if self.done.done():
            return
        with contextlib.suppress(ProcessLookupError, OSError):
            self.send_signal(signal.SIGKILL)
        self.channel.close()
        with contextlib.suppress(Exception):
            self.exit.reap_now()

    def __del__(self) -> None:
        if getattr(self, "done", None) is not None and not self.done.done():
            if self.exit.pidfd >= 0:
                warnings.warn(
                    f"aiospaces child {self.pid} was never reaped; killing it",
                    ResourceWarning,
                    stacklevel=2,
                )
            self.close_now()


def describe_status(rc: int | None) -> str:
    if rc is None:
        return "was reaped by someone else"
    if rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = f"signal {-rc}"
        return f"was killed by {name}"
    if rc == _child.EXIT_PARENT_GONE:
        return "gave up waiting for the parent (status 124)"
    return f"exited with status {rc}"


async def launch(
    flags: int,
    plan: _child.ChildPlan,
    body: Callable[[int], int],
    *,
    maps: MapPlan | None = None,
    parent_steps: Sequence[ParentStep] = (),
    started_on: StartedOn = "R",
    cgroup_fd: int = -1,
) -> Launched:
    """Clone, run the parent-side steps, release the child, await its start.

    ``parent_steps`` run in order after the id maps are written and before
    the child gets its "go" (cgroup attach, network plumbing); each is
    ``await step(pid)`` and raises to abort the spawn. ``cgroup_fd`` starts
    the child inside that cgroup v2 directory (``CLONE_INTO_CGROUP``).
    """
    loop = asyncio.get_running_loop()
    parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    psock, csock = parent_sock.detach(), child_sock.detach()
    # Everything the parent needs is built before the clone (see ExitWatch).
    try:
        child = Launched(loop, psock, started_on)
    except BaseException:
        os.close(psock)
        os.close(csock)
        raise
    sigplan = _child.signal_plan(plan.pid1_handlers)
    _flush_stdio()
    held = _child.hold_signals(sigplan)
    me = os.getpid()
    try:
        pid, pidfd = clone_child(flags, cgroup_fd=cgroup_fd)
    except BaseException:
        if os.getpid() != me:
            # An exception in the fresh child before child_main (a signal
            # handler, an at-fork hook): it must never unwind into our caller.
            _child.escape_guard(csock)
        _child.release_signals(held)
        child.channel.close()
        os.close(csock)
        raise
    if pid == 0:  # the child: never returns
        try:
            _child.child_main(csock, psock, plan, sigplan, body)
        finally:
            os._exit(_child.EXIT_SETUP_FAILED)
    child.attach(pid, pidfd)
    os.close(csock)
    _child.release_signals(held)
    await _release(child, pid, maps, parent_steps, started_on)
    return child


async def _release(
    child: Launched,
    pid: int,
    maps: MapPlan | None,
    parent_steps: Sequence[ParentStep],
    started_on: StartedOn,
) -> None:
    """The parent's side after the clone: maps, steps, "go", the start."""
    try:
        if maps is not None:
            if maps.use_helpers:
                await write_maps_async(pid, maps)
            else:  # a few /proc writes: no coroutine, no loop round trip
                write_maps(pid, maps)
        for step in parent_steps:
            await step(pid)
        child.go()
        if started_on == "go":
            child._set_started()
            # Still yield once, as asyncio's create_subprocess_exec does: a
            # task spawning in a loop must not starve the rest of the loop.
            await asyncio.sleep(0)
        await child.started
    except BaseException:
        await child.kill_and_reap()
        raise


def plan_fields(plan: _child.ChildPlan) -> tuple[Any, ...]:
    """The plan as plain values: unpickling a ChildPlan in the spawner would
    import the whole package there (see ``_spawner._BOOT``). The Sandbox
    steps, if any, travel pickled (they need their modules anyway)."""
    steps = pickle.dumps(plan.steps, pickle.HIGHEST_PROTOCOL) if plan.steps else None
    return (plan.die_with_parent, plan.close_fds, plan.pid1_handlers, plan.new_session, steps)


async def launch_remote(
    spawner: Spawner,
    flags: int,
    plan: _child.ChildPlan,
    request: tuple[bytes, bytes, str, bool],
    *,
    maps: MapPlan | None = None,
    parent_steps: Sequence[ParentStep] = (),
    started_on: StartedOn = "R",
    cgroup_fd: int = -1,
) -> Launched:
    """:func:`launch`, with the clone done by a spawner process.

    ``request`` is ``(fnref, work, fmt, wait_running)`` (see
    ``_spawner_main``). Everything after the clone is the same handshake:
    the parent writes the maps (it is in the child's parent user namespace
    with the owner's uid), runs its steps and sends "go" on the channel.
    """
    loop = asyncio.get_running_loop()
    parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    psock, csock = parent_sock.detach(), child_sock.detach()
    try:
        child = Launched(loop, psock, started_on, RelayedExit)
    except BaseException:
        os.close(psock)
        os.close(csock)
        raise
    fds = (csock,) if cgroup_fd < 0 else (csock, cgroup_fd)
    watch = child.exit
    assert isinstance(watch, RelayedExit)
    try:
        pid = await spawner.clone(watch, flags, plan_fields(plan), request, fds)
    except BaseException:
        if watch.pidfd >= 0:  # cancelled after the child was made
            await child.kill_and_reap()
        child.channel.close()
        raise
    finally:
        os.close(csock)
    child.pid = pid
    await _release(child, pid, maps, parent_steps, started_on)
    return child
