"""``Supervisor``: keep namespaced children alive with restart policies.

>>> async with Supervisor() as sup:  # doctest: +SKIP
...     await sup.start(serve, name="web", flags=CLONE_NEWUSER | CLONE_NEWPID, map_zero=True)
...     await sup.start(["sleep", "60"], name="sleeper", restart="always")
...     async for event in sup.events():
...         print(event)

Each child is watched by one task of the supervisor. When it ends, its
restart policy decides what happens next:

``"never"``       never restart
``"on-failure"``  restart after a non-zero exit status or a death by signal
``"always"``      restart after any exit

Restarts wait an exponential backoff with jitter (``backoff=(initial, max,
factor)``: the n-th restart within the current period waits about
``initial * factor**(n-1)``, capped at ``max``, minus up to ``jitter`` of
itself). A child that needs more than ``max_restarts`` restarts within
``within`` seconds is *given up* (Erlang/OTP's intensity and period): it is
not restarted again, a :class:`GaveUp` event is emitted, and with
``on_give_up="raise"`` (the default) the task that entered the ``async
with`` block is cancelled and :class:`SupervisorGaveUp` comes out of the
block, as ``asyncio.TaskGroup`` does with a failing task.

Leaving the block (normally, by an exception or by cancellation) stops
every child in parallel: ``stop_signal``, then SIGKILL after ``stop_grace``
seconds, and reaps all of them before the block is left. A second
cancellation while they are being stopped skips the rest of the grace:
every child is killed at once, and still reaped before ``CancelledError``
propagates. No child outlives the block.

A child that is PID 1 of a new pid namespace (``CLONE_NEWPID``) would
ignore SIGTERM (the kernel drops signals a namespace's init has no handler
for); ``spawn()`` installs handlers for SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and
SIGUSR2 that end it with status ``128+N``, so the default ``stop_signal``
works. Other stop signals (SIGINT) reach such a child only if it handles
them; otherwise it is killed after the grace.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import os
import random
import signal
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, Protocol

from ._aio import settle
from ._errors import ChildLost
from ._events import Event, EventStream, Exited, GaveUp, Restarting, Started, Stopped
from ._process import create_process
from ._spawn import spawn

__all__ = [
    "ChildStatus",
    "Event",
    "EventStream",
    "Exited",
    "GaveUp",
    "Restarting",
    "Started",
    "Stopped",
    "Supervisor",
    "SupervisorGaveUp",
]

RestartPolicy = Literal["never", "on-failure", "always"]
_POLICIES = ("never", "on-failure", "always")

# Entry states, as status() reports them.
STARTING = "starting"  # a restart is being spawned
RUNNING = "running"
BACKOFF = "backoff"  # waiting to be restarted
STOPPING = "stopping"  # stop_signal sent, waiting for the grace
STOPPED = "stopped"  # stopped by stop() or by leaving the block
EXITED = "exited"  # ended and the policy says: no restart
GAVE_UP = "gave-up"  # too many restarts within the period
_TERMINAL = frozenset({STOPPED, EXITED, GAVE_UP})


class SupervisorGaveUp(Exception):
    """A child needed more than ``max_restarts`` restarts within ``within``
    seconds (raised out of the ``async with`` block when
    ``on_give_up="raise"``). ``name`` names the child, ``returncode`` is its
    last status (``None`` if its last restart could not be started)."""

    def __init__(self, name: str, restarts: int, within: float, returncode: int | None) -> None:
        self.name = name
        self.restarts = restarts
        self.within = within
        self.returncode = returncode
        super().__init__(
            f"supervisor gave up on {name!r}: more than {restarts} restarts within {within:g}s "
            f"(last returncode {returncode})"
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.name, self.restarts, self.within, self.returncode))


@dataclass(frozen=True, slots=True)
class ChildStatus:
    """One child as :meth:`Supervisor.status` sees it.

    ``pid`` is ``None`` unless it runs; ``uptime`` is the seconds since the
    current run started (``None`` unless it runs); ``restarts`` counts every
    restart since ``start()``.
    """

    name: str
    state: str
    pid: int | None
    restarts: int
    returncode: int | None
    uptime: float | None


class _Proc(Protocol):
    """What the supervisor needs of a ``Child`` or an exec-mode ``Process``."""

    @property
    def pid(self) -> int: ...

    def send_signal(self, sig: int) -> None: ...

    def kill(self) -> None: ...

    async def wait(self) -> int: ...


# -- helpers shared with the pool ------------------------------------------------------


async def wait_rc(proc: _Proc) -> int | None:
    """``proc.wait()``, with ``None`` for a child someone else reaped."""
    try:
        return await proc.wait()
    except ChildLost:
        return None


async def kill_and_reap(proc: _Proc, exit_fut: asyncio.Future[int | None] | None = None) -> None:
    """SIGKILL ``proc`` and wait until it is reaped, even if cancelled meanwhile
    (the cancellation is re-raised once it is reaped)."""
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    fut = exit_fut if exit_fut is not None else asyncio.ensure_future(wait_rc(proc))
    if await settle(fut):
        raise asyncio.CancelledError


def is_argv(target: object) -> bool:
    return isinstance(target, (list, tuple))


def check_argv(target: Sequence[Any]) -> list[str | bytes | os.PathLike[Any]]:
    argv = list(target)
    if not argv:
        raise ValueError("argv must not be empty")
    for item in argv:
        if not isinstance(item, (str, bytes, os.PathLike)):
            raise TypeError(
                f"argv items must be str, bytes or path-like, not {type(item).__name__}"
            )
    return argv


def spawn_options(sandbox: object | None, options: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments for ``spawn``/``create_process`` besides the target."""
    opts = dict(options)
    if sandbox is not None:
        # flags then add namespaces to the Sandbox's (as spawn() documents)
        opts["sandbox"] = sandbox
    return opts


# -- the supervisor ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Spec:
    name: str
    target: Any
    argv: list[str | bytes | os.PathLike[Any]] | None
    flags: int
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    options: dict[str, Any]
    restart: RestartPolicy
    max_restarts: int
    within: float
    backoff: tuple[float, float, float]
    jitter: float
    stop_signal: int
    stop_grace: float


class _Entry:
    __slots__ = (
        "exit_fut",
        "kill_fut",
        "pending_error",
        "proc",
        "restarts",
        "returncode",
        "runner",
        "spec",
        "started_at",
        "state",
        "stop_fut",
        "window",
    )

    def __init__(self, spec: _Spec, loop: asyncio.AbstractEventLoop) -> None:
        self.spec = spec
        self.state = STARTING
        self.proc: _Proc | None = None
        self.exit_fut: asyncio.Future[int | None] | None = None
        self.pending_error: BaseException | None = None
        self.restarts = 0
        self.window: collections.deque[float] = collections.deque()
        self.returncode: int | None = None
        self.started_at: float | None = None
        self.stop_fut: asyncio.Future[None] = loop.create_future()
        self.kill_fut: asyncio.Future[None] = loop.create_future()
        self.runner: asyncio.Task[None] | None = None


def _set(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class Supervisor:
    """Start, watch, restart and stop named children; an async context manager.

    ``on_give_up`` is ``"raise"`` (a child given up cancels the block and
    :class:`SupervisorGaveUp` is raised out of it) or ``"report"`` (only the
    :class:`GaveUp` event). ``event_buffer`` bounds the history kept for
    :meth:`events` and each consumer's buffer.

    >>> async with Supervisor(on_give_up="report") as sup:  # doctest: +SKIP
    ...     await sup.start(worker, name="w1", restart="always", backoff=(0.1, 5, 2))
    ...     await sup.wait()
    """

    def __init__(
        self,
        *,
        on_give_up: Literal["raise", "report"] = "raise",
        event_buffer: int = 1024,
    ) -> None:
        if on_give_up not in ("raise", "report"):
            raise ValueError(f"on_give_up must be 'raise' or 'report', not {on_give_up!r}")
        if isinstance(event_buffer, bool) or not isinstance(event_buffer, int) or event_buffer < 1:
            raise ValueError("event_buffer must be a positive int")
        self._on_give_up = on_give_up
        self._event_buffer = event_buffer
        self._loop: asyncio.AbstractEventLoop | None = None
        self._host: asyncio.Task[Any] | None = None
        self._entries: dict[str, _Entry] = {}
        self._history: collections.deque[Event] = collections.deque(maxlen=event_buffer)
        self._streams: set[EventStream] = set()
        self._state = "new"  # new -> open -> closing -> closed
        self._gave_up: SupervisorGaveUp | None = None
        self._host_cancelled = False

    def __repr__(self) -> str:
        running = sum(e.state == RUNNING for e in self._entries.values())
        return f"<Supervisor {self._state} children={len(self._entries)} running={running}>"

    # -- context ----------------------------------------------------------------------
    async def __aenter__(self) -> Supervisor:
        if self._state != "new":
            raise RuntimeError("a Supervisor can be entered only once")
        self._loop = asyncio.get_running_loop()
        self._host = asyncio.current_task()
        if self._host is None:  # pragma: no cover - async with always runs in a task
            raise RuntimeError("Supervisor needs to be entered from a task")
        self._state = "open"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        """Stop every child (in parallel, each bounded by its grace) and reap all.

        Cancellation: a cancellation that arrives while the children are
        being stopped kills them all at once (SIGKILL), waits until they are
        reaped, then propagates.
        """
        host = self._host
        assert host is not None
        self._state = "closing"
        if self._host_cancelled:
            host.uncancel()
        cancelled = exc_type is not None and issubclass(exc_type, asyncio.CancelledError)
        # A CancelledError is somebody else's if it was not ours, or if
        # another cancellation is still requested on top of ours.
        propagate_cancel = cancelled and (not self._host_cancelled or host.cancelling() > 0)
        for entry in self._entries.values():
            _set(entry.stop_fut)
        runners = {e.runner for e in self._entries.values() if e.runner is not None}
        while any(not r.done() for r in runners):
            try:
                await asyncio.wait(runners)
            except asyncio.CancelledError:
                # Ours (requested on give-up, delivered only now) when no
                # other cancellation is pending; anybody else's: hurry up.
                if host.cancelling() > 0 or not self._host_cancelled:
                    propagate_cancel = True
                    self._kill_all()
        self._state = "closed"
        for stream in list(self._streams):
            stream._close()
        self._streams.clear()
        errors = [r.exception() for r in runners if not r.cancelled() and r.exception()]
        if propagate_cancel:
            if cancelled:
                return False
            raise asyncio.CancelledError
        if exc_type is not None and not cancelled:
            return False  # the block's own exception wins
        if errors:
            raise RuntimeError("a supervisor task failed") from errors[0]
        if self._gave_up is not None and self._on_give_up == "raise":
            raise self._gave_up
        return cancelled  # our own cancellation, with nothing to raise: swallow it

    def _kill_all(self) -> None:
        for entry in self._entries.values():
            _set(entry.stop_fut)
            _set(entry.kill_fut)

    # -- public API -------------------------------------------------------------------
    async def start(
        self,
        target: Callable[..., Any] | Sequence[str | bytes | os.PathLike[Any]],
        *,
        name: str,
        flags: int = 0,
        sandbox: object | None = None,
        args: Iterable[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        restart: RestartPolicy = "on-failure",
        max_restarts: int = 5,
        within: float = 60.0,
        backoff: tuple[float, float, float] = (0.1, 30.0, 2.0),
        jitter: float = 0.2,
        stop_signal: int = signal.SIGTERM,
        stop_grace: float = 5.0,
        **options: Any,
    ) -> int:
        """Start ``target`` as the child ``name`` and supervise it; return its pid.

        ``target`` is a callable (run by :func:`aiospaces.spawn` with ``args``
        and ``kwargs``) or an argv list (run by ``aiospaces.create_process``).
        ``flags`` or ``sandbox`` say where it runs; other keyword arguments
        (``map_zero=True``, ``uid_map``, ``pass_fds``, ``stdout``...) go to
        ``spawn``/``create_process`` unchanged, on every restart.

        The first start is not retried: if it fails, its error
        (``SpawnError``, ``FileNotFoundError``...) is raised here and nothing
        is supervised. A restart that fails to start counts as a failure
        (an :class:`Exited` event with ``error``) and is retried under the
        same policy and budget.

        ``name`` may be reused once its previous child is stopped, exited or
        given up.

        Cancellation: cancelling ``start()`` kills and reaps the child if it
        was being created; once ``start()`` has returned, the child belongs
        to the supervisor.

        >>> await sup.start(["sleep", "60"], name="sleeper", restart="always")  # doctest: +SKIP
        """
        loop = self._check_open()
        spec = self._make_spec(
            target,
            name,
            flags,
            sandbox,
            args,
            kwargs,
            restart,
            max_restarts,
            within,
            backoff,
            jitter,
            stop_signal,
            stop_grace,
            options,
        )
        old = self._entries.get(name)
        if old is not None and old.state not in _TERMINAL:
            raise ValueError(f"a child named {name!r} is already supervised ({old.state})")
        proc = await self._launch(spec)
        if self._state != "open" or (
            name in self._entries and self._entries[name].state not in _TERMINAL
        ):
            await kill_and_reap(proc)
            self._check_open()
            raise ValueError(f"a child named {name!r} was started meanwhile")
        entry = _Entry(spec, loop)
        self._entries.pop(name, None)
        self._entries[name] = entry
        self._attach(entry, proc, 0)
        entry.runner = loop.create_task(self._supervise(entry), name=f"aiospaces-supervise-{name}")
        return proc.pid

    async def stop(self, name: str) -> int | None:
        """Stop the child ``name``: ``stop_signal``, then SIGKILL after
        ``stop_grace``; return its last returncode. It is not restarted.

        A child waiting for a restart is just not restarted; a child that
        already ended stays as it is. ``KeyError`` for an unknown name.

        Cancellation: cancelling ``stop()`` does not cancel the stop (the
        supervisor finishes it); it only stops waiting for it.
        """
        entry = self._entries[name]
        _set(entry.stop_fut)
        if entry.runner is not None:
            await asyncio.shield(entry.runner)
        return entry.returncode

    async def wait(self, name: str | None = None) -> None:
        """Wait until the child ``name`` (default: every child) is in a final
        state: stopped, exited without restart, or given up.

        Cancellation: only the waiting is cancelled.
        """
        while True:
            entries = [self._entries[name]] if name is not None else list(self._entries.values())
            runners = {e.runner for e in entries if e.runner is not None and not e.runner.done()}
            if not runners:
                return
            await asyncio.wait(runners)

    def status(self) -> dict[str, ChildStatus]:
        """Each child's state, pid, restarts, last returncode and uptime, by name
        (in the order they were started)."""
        now = time.monotonic()
        out = {}
        for name, e in self._entries.items():
            running = e.proc is not None and e.state in (RUNNING, STOPPING)
            out[name] = ChildStatus(
                name=name,
                state=e.state,
                pid=e.proc.pid if running and e.proc is not None else None,
                restarts=e.restarts,
                returncode=e.returncode,
                uptime=(now - e.started_at) if running and e.started_at is not None else None,
            )
        return out

    def events(self, *, replay: bool = True) -> EventStream:
        """An async iterator over the events, ending when the supervisor closes.

        With ``replay=True`` it starts with the retained history (the last
        ``event_buffer`` events), so nothing since ``start()`` is missed.
        Each call makes an independent consumer with its own bounded buffer
        (oldest events dropped and counted in ``stream.dropped`` when it
        falls behind); with no consumer, events are only kept in the history.

        >>> async for event in sup.events():  # doctest: +SKIP
        ...     print(f"{event.wall:.3f} {event}")
        """
        loop = self._loop or asyncio.get_running_loop()
        stream = EventStream(loop, self._event_buffer, self._history if replay else ())
        if self._state == "closed":
            stream._close()
        else:
            self._streams.add(stream)
            stream._unsubscribe = self._streams.discard
        return stream

    @property
    def gave_up(self) -> SupervisorGaveUp | None:
        """The first give-up, if any (also with ``on_give_up="report"``)."""
        return self._gave_up

    # -- internals -----------------------------------------------------------------------
    def _check_open(self) -> asyncio.AbstractEventLoop:
        if self._state == "new":
            raise RuntimeError("use the Supervisor as `async with Supervisor() as sup:`")
        if self._state != "open" or self._loop is None:
            raise RuntimeError("the Supervisor is closing or closed")
        return self._loop

    def _make_spec(
        self,
        target: Any,
        name: str,
        flags: int,
        sandbox: object | None,
        args: Iterable[Any],
        kwargs: Mapping[str, Any] | None,
        restart: str,
        max_restarts: int,
        within: float,
        backoff: tuple[float, float, float],
        jitter: float,
        stop_signal: int,
        stop_grace: float,
        options: Mapping[str, Any],
    ) -> _Spec:
        if not isinstance(name, str) or not name:
            raise TypeError("name must be a non-empty str")
        argv = None
        if is_argv(target):
            argv = check_argv(target)
            if tuple(args) or kwargs:
                raise TypeError("args/kwargs are for a callable target; put arguments in argv")
        elif not callable(target):
            raise TypeError(
                f"target must be a callable or an argv list, not {type(target).__name__}"
            )
        if isinstance(args, (str, bytes)) or not isinstance(args, Iterable):
            raise TypeError(f"args must be a tuple or iterable, not {type(args).__name__}")
        if restart not in _POLICIES:
            raise ValueError(f"restart must be one of {', '.join(_POLICIES)}, not {restart!r}")
        if isinstance(max_restarts, bool) or not isinstance(max_restarts, int) or max_restarts < 0:
            raise ValueError("max_restarts must be an int >= 0")
        within = _positive(within, "within")
        if not (isinstance(backoff, tuple | list) and len(backoff) == 3):
            raise TypeError("backoff must be (initial, max, factor)")
        initial, cap, factor = (float(x) for x in backoff)
        if not (0 <= initial <= cap and math.isfinite(cap) and factor >= 1):
            raise ValueError("backoff needs 0 <= initial <= max (finite) and factor >= 1")
        if not 0 <= jitter <= 1:
            raise ValueError("jitter must be within [0, 1]")
        try:
            stop_signal = signal.Signals(stop_signal)
        except ValueError:
            raise ValueError(f"stop_signal {stop_signal!r} is not a signal") from None
        if not (isinstance(stop_grace, int | float) and stop_grace >= 0):
            raise ValueError("stop_grace must be a number >= 0")
        return _Spec(
            name=name,
            target=target,
            argv=argv,
            flags=flags,
            args=tuple(args),
            kwargs=dict(kwargs or {}),
            options=spawn_options(sandbox, options),
            restart=restart,  # type: ignore[arg-type]
            max_restarts=max_restarts,
            within=within,
            backoff=(initial, cap, factor),
            jitter=float(jitter),
            stop_signal=int(stop_signal),
            stop_grace=float(stop_grace),
        )

    async def _launch(self, spec: _Spec) -> _Proc:
        if spec.argv is not None:
            return await create_process(spec.argv, spec.flags, **spec.options)
        return await spawn(
            spec.target, spec.flags, args=spec.args, kwargs=spec.kwargs, **spec.options
        )

    def _attach(self, entry: _Entry, proc: _Proc, attempt: int) -> None:
        entry.proc = proc
        entry.exit_fut = asyncio.ensure_future(wait_rc(proc))
        entry.started_at = time.monotonic()
        entry.state = RUNNING
        self._emit(Started(name=entry.spec.name, pid=proc.pid, attempt=attempt))

    def _emit(self, event: Event) -> None:
        self._history.append(event)
        for stream in self._streams:
            stream._push(event)

    def _delay(self, spec: _Spec, attempt: int) -> float:
        initial, cap, factor = spec.backoff
        delay = min(cap, initial * factor ** (attempt - 1))
        return delay * random.uniform(1.0 - spec.jitter, 1.0)

    async def _supervise(self, entry: _Entry) -> None:
        spec = entry.spec
        try:
            while True:
                rc, error = await self._watch(entry)
                if entry.stop_fut.done():
                    entry.state = STOPPED
                    self._emit(Stopped(name=spec.name, returncode=rc))
                    return
                failed = error is not None or rc != 0
                if spec.restart == "never" or (spec.restart == "on-failure" and not failed):
                    entry.state = EXITED
                    return
                now = time.monotonic()
                while entry.window and entry.window[0] <= now - spec.within:
                    entry.window.popleft()
                if len(entry.window) >= spec.max_restarts:
                    entry.state = GAVE_UP
                    self._emit(
                        GaveUp(
                            name=spec.name,
                            restarts=spec.max_restarts,
                            within=spec.within,
                            returncode=rc,
                        )
                    )
                    self._give_up(SupervisorGaveUp(spec.name, spec.max_restarts, spec.within, rc))
                    return
                entry.window.append(now)
                entry.restarts += 1
                attempt = len(entry.window)
                delay = self._delay(spec, attempt)
                entry.state = BACKOFF
                self._emit(Restarting(name=spec.name, attempt=attempt, delay=delay))
                if delay > 0:
                    await asyncio.wait([entry.stop_fut], timeout=delay)
                if entry.stop_fut.done():
                    entry.state = STOPPED
                    self._emit(Stopped(name=spec.name, returncode=rc))
                    return
                entry.state = STARTING
                try:
                    proc = await self._launch(spec)
                except Exception as exc:
                    entry.pending_error = exc
                    continue
                self._attach(entry, proc, attempt)
        finally:
            # Only reached with a live child if this task was cancelled or
            # failed: never leave it behind.
            if entry.proc is not None and entry.exit_fut is not None and not entry.exit_fut.done():
                await kill_and_reap(entry.proc, entry.exit_fut)

    async def _watch(self, entry: _Entry) -> tuple[int | None, BaseException | None]:
        """Wait until the current run ends (stopping it if asked); report it."""
        name = entry.spec.name
        if entry.pending_error is not None:
            error, entry.pending_error = entry.pending_error, None
            entry.returncode = None
            self._emit(Exited(name=name, pid=None, returncode=None, error=error))
            return None, error
        proc, exit_fut = entry.proc, entry.exit_fut
        assert proc is not None and exit_fut is not None
        if not exit_fut.done():
            either: list[asyncio.Future[Any]] = [exit_fut, entry.stop_fut]
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            if not exit_fut.done():
                entry.state = STOPPING
                await self._terminate(entry, proc, exit_fut)
        rc = exit_fut.result()
        entry.returncode = rc
        entry.proc = entry.exit_fut = entry.started_at = None
        self._emit(Exited(name=name, pid=proc.pid, returncode=rc))
        return rc, None

    async def _terminate(
        self, entry: _Entry, proc: _Proc, exit_fut: asyncio.Future[int | None]
    ) -> None:
        spec = entry.spec
        if not entry.kill_fut.done():
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(spec.stop_signal)
            either: list[asyncio.Future[Any]] = [exit_fut, entry.kill_fut]
            await asyncio.wait(
                either,
                timeout=spec.stop_grace,
                return_when=asyncio.FIRST_COMPLETED,
            )
        if not exit_fut.done():
            await kill_and_reap(proc, exit_fut)

    def _give_up(self, error: SupervisorGaveUp) -> None:
        if self._gave_up is None:
            self._gave_up = error
        if (
            self._on_give_up == "raise"
            and self._state == "open"
            and not self._host_cancelled
            and self._host is not None
        ):
            self._host_cancelled = True
            self._host.cancel()


def _positive(value: object, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"{field} must be a number > 0")
    return float(value)
