"""The supervisor's side of the spawner process (see ``_spawner_main``).

A fork copies the parent's page tables and blocks the event loop while it
does: from a 1 GiB service every fn-mode spawn takes tens of milliseconds.
A :class:`Spawner` is a small interpreter started once (``posix_spawn``:
no copy of the parent) that forks the children instead, so the cost of a
spawn no longer depends on the parent's size and the loop never forks.

The price: ``fn`` and its arguments travel pickled, so ``fn`` must be
importable by reference (a module-level function, not a closure or a
lambda, not from ``__main__``), and the child starts from the spawner's
fresh import of fn's module rather than from a copy of the parent's memory
(the parent's current environment and working directory are passed along).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import pickle
import select
import signal
import socket
import sys
import warnings
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Self

from ._aio import settle
from ._errors import SpawnError
from ._linux.clone import _clone_error
from ._spawner_main import _CLONE_HEAD, _EXIT, _I32, MAX_MSG, recv_msg
from ._watcher import ExitWatch

__all__ = ["Spawner", "SpawnerUnsuitable"]

START_TIMEOUT = 30.0  # a cold interpreter on a loaded CI machine


# The spawner imports only what a child needs, without the package's
# __init__ (which pulls in asyncio and every module): each mapped page of
# the spawner is copied into every fork it makes, so it must stay small.
# The stand-in package is removed once loaded; a later ``import aiospaces``
# (from fn's module) runs the real __init__ and finds these submodules.
_BOOT = """\
import sys, types
pkg = types.ModuleType("aiospaces")
pkg.__path__ = [sys.argv[1]]
sys.modules["aiospaces"] = pkg
from aiospaces._spawner_main import main
del sys.modules["aiospaces"]
sys.exit(main(sys.argv[1:]))
"""


class SpawnerUnsuitable(ValueError):
    """This spawn cannot go through a spawner (``via="spawner"``): why."""


class RelayedExit(ExitWatch):
    """An :class:`ExitWatch` fed by the spawner's ``exit`` message.

    The child is the spawner's, so ``waitid`` on its pidfd would fail with
    ECHILD here; the pidfd is kept for signals (never a recycled pid).
    """

    __slots__ = ("_rc",)

    _NO_RC = object()

    def __init__(
        self, loop: asyncio.AbstractEventLoop, on_exit: Callable[[int | None], None]
    ) -> None:
        super().__init__(loop, on_exit)
        self._rc: object = self._NO_RC

    def watch(self) -> None:
        # Also before the pidfd arrives: a cancelled request's child is
        # killed on arrival and must then finish the watch.
        if not self._watching:
            self._watching = True
            if self._rc is not self._NO_RC:
                self._loop.call_soon(self._deliver_now)

    def deliver(self, rc: int | None) -> None:
        """The spawner reaped the child (or is gone: ``None``)."""
        self._rc = rc
        if self._watching:
            self._deliver_now()

    def _deliver_now(self) -> None:
        rc = self._rc
        if rc is not self._NO_RC:
            self._finish(rc if isinstance(rc, int) else None)

    def _finish(self, rc: int | None) -> None:
        # Nothing registered with the loop: just close the pidfd and report.
        fd, self.pidfd = self.pidfd, -1
        if fd < 0:
            return
        os.close(fd)
        self._on_exit(rc)

    def reap_now(self) -> None:
        """Loop gone: wait (bounded) for the killed child's pidfd, then close."""
        if self.pidfd < 0:
            return
        with contextlib.suppress(OSError):
            select.select([self.pidfd], [], [], 5.0)
        rc = self._rc if isinstance(self._rc, int) else -signal.SIGKILL
        self._finish(rc)


class Spawner:
    """A small process that forks fn-mode children for this event loop.

    ``spawn(fn, flags, via="spawner")`` uses the loop's default spawner
    (started on first use, stopped at interpreter exit or by
    :func:`aiospaces.stop_spawner`); an explicit one is used with
    ``spawner=``. Leaving ``async with`` (or :meth:`aclose`) stops the
    spawner: children still running are killed (they die with it).

    >>> async with Spawner() as sp:  # doctest: +SKIP
    ...     child = await spawn(os.getpid, CLONE_NEWUSER | CLONE_NEWPID, spawner=sp)
    ...     await child.result()
    1
    """

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sock: socket.socket | None = None
        self.pid = 0
        self._pidfd = -1
        # Replies come in request order: (future, the child's watch, flags).
        self._pending: deque[tuple[asyncio.Future[int], RelayedExit | None, int]] = deque()
        self._imported: set[bytes] = set()  # fn references this spawner has imported
        self._children: dict[int, RelayedExit] = {}
        self._env: dict[Any, Any] = {}  # os.environ as the spawner got it (raw)
        self._starting: asyncio.Future[None] | None = None
        self._closed = False
        self._emptied: asyncio.Future[None] | None = None  # set by aclose()
        self.lost_reason: str | None = None
        _ALL.add(self)

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("running" if self._sock else "not started")
        return f"<Spawner pid={self.pid} {state} children={len(self._children)}>"

    @property
    def running(self) -> bool:
        return self._sock is not None and not self._closed

    # -- lifetime -----------------------------------------------------------
    async def start(self) -> Self:
        """Start the spawner process (idempotent); returns once it is ready."""
        if self._closed:
            raise RuntimeError("this Spawner is closed")
        loop = asyncio.get_running_loop()
        if self._loop is not None and self._loop is not loop:
            raise RuntimeError("a Spawner serves the event loop that started it")
        if self._starting is None:
            self._loop = loop
            self._starting = loop.create_future()
            try:
                self._launch(loop)
            except BaseException as exc:
                self._starting.set_exception(exc)
                self._starting.exception()
                self._closed = True
                raise
        await asyncio.wait_for(asyncio.shield(self._starting), START_TIMEOUT)
        return self

    def _launch(self, loop: asyncio.AbstractEventLoop) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            pkg_dir = os.path.dirname(os.path.abspath(__file__))
            argv = [sys.executable, "-c", _BOOT, pkg_dir, "3", str(os.getpid())]
            # posix_spawn is vfork-like in glibc: no copy of our page tables.
            self.pid = os.posix_spawn(
                sys.executable,
                argv,
                os.environ,
                file_actions=[(os.POSIX_SPAWN_DUP2, theirs.fileno(), 3)],
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self._pidfd = os.pidfd_open(self.pid)
        self._sock = ours
        ours.setblocking(False)
        self._env = dict(_environ_raw())
        _send(ours, b"N" + pickle.dumps((list(sys.path), dict(os.environ), _cwd())))
        self._pending.append((loop.create_future(), None, 0))  # the "ready" reply
        loop.add_reader(ours.fileno(), self._on_readable)
        loop.add_reader(self._pidfd, self._on_spawner_exit)

    async def aclose(self) -> None:
        """Stop the spawner; children still running are killed and reported."""
        if self._closed:
            return
        self._closed = True
        live = list(self._children.values())
        for watch in live:
            with contextlib.suppress(OSError):
                if watch.pidfd >= 0:
                    signal.pidfd_send_signal(watch.pidfd, signal.SIGKILL)
        # The spawner relays their exits (so their handles get real statuses),
        # then goes on EOF.
        if self._children and self._loop is not None:
            self._emptied = self._loop.create_future()
            await asyncio.wait([self._emptied], timeout=5.0)
        self._shutdown()
        if self._pidfd >= 0:
            await _wait_readable(self._pidfd, 5.0)
        self._reap_self()

    def close_now(self) -> None:
        """Blocking close (no loop): the spawner exits on EOF, reap it."""
        self._closed = True
        self._shutdown()
        if self._pidfd >= 0:
            with contextlib.suppress(OSError):
                select.select([self._pidfd], [], [], 5.0)
        self._reap_self()

    def __del__(self) -> None:
        if getattr(self, "_pidfd", -1) >= 0:
            warnings.warn(f"{self!r} was never closed; stopping it", ResourceWarning, stacklevel=2)
            with contextlib.suppress(Exception):
                self.close_now()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _shutdown(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            if self._loop is not None and not self._loop.is_closed():
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(sock.fileno())
            sock.close()
        why = self.lost_reason or "the spawner was closed"
        if self._starting is not None and not self._starting.done():
            self._starting.set_exception(
                SpawnError(errno.EPIPE, f"{why} before it was ready", step="spawner")
            )
            self._starting.exception()
        self._fail_pending(why)
        for watch in list(self._children.values()):
            self._orphan(watch)
        self._children.clear()

    def _reap_self(self) -> None:
        fd, self._pidfd = self._pidfd, -1
        if fd < 0:
            return
        if self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(Exception):
                self._loop.remove_reader(fd)
        try:
            os.waitid(os.P_PIDFD, fd, os.WEXITED | os.WNOHANG)
        except ChildProcessError:
            pass
        except OSError:
            with contextlib.suppress(OSError):
                os.kill(self.pid, signal.SIGKILL)
        else:
            # Still there after the grace (it ignores EOF?): kill it and reap.
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(fd, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitid(os.P_PIDFD, fd, os.WEXITED)
        os.close(fd)

    def _on_spawner_exit(self) -> None:
        if self._sock is not None:
            # Read what it said before it went (exit statuses) first.
            self._on_readable()
        self.lost_reason = self.lost_reason or f"the spawner process {self.pid} died"
        self._closed = True
        self._shutdown()
        self._reap_self()

    def _fail_pending(self, why: str) -> None:
        while self._pending:
            fut, _, _ = self._pending.popleft()
            if not fut.done():
                fut.set_exception(SpawnError(errno.EPIPE, why, step="spawner"))
                fut.exception()

    def _orphan(self, watch: RelayedExit) -> None:
        """The spawner is gone: its statuses with it. Wait for the child to
        end (its pidfd turns readable; it had PDEATHSIG) and report it lost."""
        if watch.pidfd < 0:
            watch.deliver(None)
            return
        loop = self._loop
        if loop is None or loop.is_closed():
            watch.deliver(None)
            return
        fd = watch.pidfd

        def ready() -> None:
            with contextlib.suppress(Exception):
                loop.remove_reader(fd)
            watch.deliver(None)

        loop.add_reader(fd, ready)

    # -- requests -----------------------------------------------------------
    async def clone(
        self,
        watch: RelayedExit,
        flags: int,
        fields: tuple[Any, ...],
        request: tuple[bytes, bytes, str, bool],
        fds: tuple[int, ...],
    ) -> int:
        """Send a clone request; return the child's pid (``watch`` is armed).

        ``request`` is ``(fnref, work, fmt, wait_running)``. Not cancellable
        half-way: a cancelled caller still gets the reply (so the child, if
        one was made, is armed and killed), then ``CancelledError``.
        """
        if self._starting is None or not self._starting.done():
            await self.start()
        sock = self._sock
        loop = self._loop
        if sock is None or loop is None or self._closed:
            why = self.lost_reason or "the spawner is closed"
            raise SpawnError(errno.EPIPE, why, step="spawner")
        fnref, work, fmt, wait_running = request
        # The environment travels only when it changed since the spawner
        # started (compared raw: decoding os.environ costs more than a spawn's
        # whole parent side).
        env = None if _environ_raw() == self._env else dict(os.environ)
        payload = pickle.dumps(
            (fields, fnref, work, fmt, wait_running, env, _cwd()),
            pickle.HIGHEST_PROTOCOL,
        )
        pdeathsig = signal.SIGKILL if fields[0] else 0  # die_with_parent
        data = b"C" + _CLONE_HEAD.pack(flags, len(fds) > 1, pdeathsig) + payload
        if len(data) > MAX_MSG:  # the environment grew (the args were checked before)
            raise SpawnerUnsuitable(
                f"the pickled request is {len(data)} bytes, over the spawner's {MAX_MSG}: "
                "pass large data another way, or use via='fork'"
            )
        if fnref not in self._imported:
            self._imported.add(fnref)
            await _sendmsg(loop, sock, b"I" + fnref, ())
        await _sendmsg(loop, sock, data, fds)
        fut: asyncio.Future[int] = loop.create_future()
        self._pending.append((fut, watch, flags))
        if await settle(fut):
            if fut.exception() is None:
                watch.watch()
                with contextlib.suppress(OSError):
                    if watch.pidfd >= 0:
                        signal.pidfd_send_signal(watch.pidfd, signal.SIGKILL)
            raise asyncio.CancelledError
        return fut.result()

    def _on_readable(self) -> None:
        sock = self._sock
        while sock is not None:
            try:
                data, fds = recv_msg(sock, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            except OSError as exc:
                self.lost_reason = f"the spawner's socket failed: {exc}"
                data, fds = b"", []
            if not data:
                for fd in fds:
                    os.close(fd)
                self.lost_reason = self.lost_reason or f"the spawner process {self.pid} died"
                self._closed = True
                self._shutdown()
                return
            self._dispatch(data, fds)
            sock = self._sock

    def _dispatch(self, data: bytes, fds: list[int]) -> None:
        kind = data[:1]
        if kind == b"X":
            pid, rc = _EXIT.unpack_from(data, 1)
            watch = self._children.pop(pid, None)
            if watch is not None:
                watch.deliver(rc)
            if not self._children and self._emptied is not None:
                _set_once(self._emptied)
            return
        if not self._pending:  # pragma: no cover - protocol bug
            for fd in fds:
                os.close(fd)
            return
        fut, watch, flags = self._pending.popleft()
        if kind == b"R":
            if self._starting is not None and not self._starting.done():
                self._starting.set_result(None)
            fut.cancel()
        elif kind == b"K" and watch is not None and fds:
            (pid,) = _I32.unpack_from(data, 1)
            watch.arm(pid, fds[0])
            for extra in fds[1:]:
                os.close(extra)
            self._children[pid] = watch
            fut.set_result(pid)
        else:
            for fd in fds:
                os.close(fd)
            if kind == b"F":
                (err,) = _I32.unpack_from(data, 1)
                exc: SpawnError = _clone_error(OSError(err, os.strerror(err)), flags, "clone3")
            else:
                exc = SpawnError(errno.EPROTO, f"unexpected reply {kind!r}", step="spawner")
            fut.set_exception(exc)


_ALL: weakref.WeakSet[Spawner] = weakref.WeakSet()
_DEFAULT: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Spawner] = (
    weakref.WeakKeyDictionary()
)


def default_spawner() -> Spawner:
    """The running loop's spawner (made on first use; started by its first clone)."""
    loop = asyncio.get_running_loop()
    sp = _DEFAULT.get(loop)
    if sp is None or sp._closed:
        _close_stale()
        sp = _DEFAULT[loop] = Spawner()
    return sp


def _close_stale() -> None:
    """Spawners of closed loops can never be served again: stop them (and
    drop them from the registry: each holds its loop, so the weak key alone
    would never go)."""
    for sp in list(_ALL):
        if sp._loop is not None and sp._loop.is_closed() and sp._pidfd >= 0:
            sp.close_now()
    for loop in [lp for lp in list(_DEFAULT) if lp.is_closed()]:
        _DEFAULT.pop(loop, None)


async def stop_spawner() -> None:
    """Stop the running loop's default spawner, if it has one.

    It is also stopped at interpreter exit; a service that wants its
    children and the spawner gone at a known point calls this.
    """
    loop = asyncio.get_running_loop()
    sp = _DEFAULT.pop(loop, None)
    if sp is not None:
        await sp.aclose()


def close_all_now() -> None:
    """Stop every spawner, blocking (atexit; the test suite's leak check)."""
    for sp in list(_ALL):
        if sp._pidfd >= 0 or sp._sock is not None:
            sp.close_now()
    _DEFAULT.clear()


def _environ_raw() -> Mapping[Any, Any]:
    """os.environ's underlying dict (bytes on POSIX), without decoding."""
    raw = getattr(os.environ, "_data", None)
    return raw if isinstance(raw, dict) else dict(os.environ)


def _cwd() -> str | None:
    try:
        return os.getcwd()
    except OSError:
        return None


def _send(sock: socket.socket, data: bytes) -> None:
    sock.setblocking(True)
    try:
        sock.send(data)
    finally:
        sock.setblocking(False)


async def _sendmsg(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, data: bytes, fds: tuple[int, ...]
) -> None:
    while True:
        try:
            socket.send_fds(sock, [data], list(fds))
            return
        except BlockingIOError:
            pass
        writable: asyncio.Future[None] = loop.create_future()
        loop.add_writer(sock.fileno(), _set_once, writable)
        try:
            await writable
        finally:
            loop.remove_writer(sock.fileno())


def _set_once(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


async def _wait_readable(fd: int, limit: float) -> None:
    loop = asyncio.get_running_loop()
    readable: asyncio.Future[None] = loop.create_future()
    loop.add_reader(fd, _set_once, readable)
    try:
        await asyncio.wait_for(readable, limit)
    except TimeoutError:
        pass
    finally:
        loop.remove_reader(fd)


def _atexit() -> None:
    with contextlib.suppress(Exception):
        close_all_now()


import atexit  # noqa: E402  (registered last: after the module is complete)

atexit.register(_atexit)
