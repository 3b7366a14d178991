"""``spawn()`` and :class:`Child`: run a Python callable in new namespaces.

The child is a copy of the parent (clone3 without ``CLONE_VM``), so ``fn``
may be any callable: closures and lambdas included. Its return value comes
back pickled over the child's channel.
"""

from __future__ import annotations

import asyncio
import json
import operator
import os
import pickle
import signal
import traceback
import types
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Generic, Literal, TypeVar

from . import _frames
from ._child import ChildPlan
from ._errors import ChildError, ChildExited, ChildKilled
from ._handle import ProcessHandle
from ._launch import Launched, launch
from ._linux import constants as C
from ._linux import validate_flags
from .idmap import MapPlan, MapSpec, plan_maps
from .limits import SandboxGuard
from .sandbox import Sandbox

T = TypeVar("T")
_CoroutineType = types.CoroutineType

__all__ = ["Child", "RemoteTraceback", "spawn"]


class RemoteTraceback(Exception):
    """The child's formatted traceback, attached as ``__cause__``."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


# -- the child's body ---------------------------------------------------------


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    return 1


_send = _frames.send


ResultFormat = Literal["pickle", "json", "bytes"]
RESULT_FORMATS: tuple[str, ...] = ("pickle", "json", "bytes")


def _encode_value(value: Any, fmt: str) -> bytes:
    if fmt == "pickle":
        return pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
    if fmt == "json":
        return json.dumps(value).encode()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"result_format='bytes' needs bytes, not {type(value).__qualname__}")


def _fn_body(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    send_running: bool,
    fmt: str = "pickle",
) -> Callable[[int], int]:
    def body(sock: int) -> int:
        if send_running:
            _frames.write_all(sock, _frames.RUNNING)
        try:
            value = fn(*args, **kwargs)
            # Not inspect.isawaitable: its ABC check writes caches, and in a
            # fresh child every page written is a copy-on-write fault.
            if type(value) is _CoroutineType or hasattr(type(value), "__await__"):
                value = asyncio.run(_await(value))
        except SystemExit as exc:
            return _exit_code(exc.code)
        except BaseException as exc:
            tb = "".join(traceback.format_exception(exc))
            if fmt != "pickle":  # text only: nothing of the child's is unpickled
                _send(
                    sock,
                    b"T",
                    _frames.text_record("exception", type(exc).__qualname__, str(exc), tb),
                )
                return 1
            try:
                payload = pickle.dumps((exc, tb), pickle.HIGHEST_PROTOCOL)
            except Exception as perr:
                _send(
                    sock,
                    b"T",
                    _frames.text_record(
                        "exception",
                        type(exc).__qualname__,
                        f"{exc} (and it could not be pickled: {perr})",
                        tb,
                    ),
                )
            else:
                _send(sock, b"X", payload)
            return 1
        try:
            payload = _encode_value(value, fmt)
        except Exception as perr:
            _send(
                sock,
                b"T",
                _frames.text_record(
                    "value",
                    type(value).__qualname__,
                    f"fn returned a {type(value).__qualname__} that could not be "
                    f"{'pickled' if fmt == 'pickle' else 'encoded as ' + fmt}: {perr}",
                    "".join(traceback.format_exception(perr)),
                ),
            )
            return 1
        _send(sock, b"V", payload)
        return 0

    return body


async def _await(aw: Awaitable[Any]) -> Any:
    return await aw


# -- the parent's handle -------------------------------------------------------


class Child(ProcessHandle, Generic[T]):
    """A running (or finished) child made by :func:`spawn`. No public constructor.

    ``pid`` is the pid in the parent's namespace; ``returncode`` is ``None``
    while it runs, its exit status after, or ``-N`` when signal N killed it.
    Signals go through the pidfd, so they never reach a recycled pid.

    A child that is PID 1 of a new pid namespace gets handlers for SIGTERM,
    SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 (the kernel ignores signals a
    namespace's init has no handler for); they end it with status ``128+N``
    (``terminate()`` → 143), as a shell reports a signal death.

    Cancellation: cancelling :meth:`wait` or :meth:`result` does not touch
    the child (as asyncio's ``Process.wait``); leaving ``async with`` kills
    and reaps it.

    >>> async with await spawn(lambda: 42, CLONE_NEWUSER) as child:  # doctest: +SKIP
    ...     assert await child.result() == 42
    """

    __slots__ = ("_format",)

    def __init__(
        self,
        core: Launched,
        flags: int,
        result_format: str = "pickle",
        guard: SandboxGuard | None = None,
    ) -> None:
        super().__init__(core, flags, guard)
        self._format = result_format

    def __repr__(self) -> str:
        return f"<Child pid={self.pid} {self._state()}>"

    def terminate(self) -> None:
        """SIGTERM (a PID-1 child then exits with status 143)."""
        self.send_signal(signal.SIGTERM)

    async def wait(self) -> int:
        """Wait until the child exits and is reaped; return ``returncode``.

        Raises :class:`ChildLost` if another part of the program reaped it.
        """
        await self._reaped()
        rc = self._core.returncode
        assert rc is not None
        return rc

    async def result(self) -> T:
        """Wait for the child, then return ``fn``'s value or raise its exception.

        The exception is the child's own, re-raised with the child's
        traceback as ``__cause__`` (:class:`RemoteTraceback`). Without a
        result: :class:`ChildKilled` (signal) or :class:`ChildExited`;
        something that could not travel: :class:`ChildError`.

        With ``result_format="pickle"`` (the default) the value is unpickled:
        only use it for a child whose code you trust as much as your own (a
        child can craft a pickle that runs code in the parent). For untrusted
        code use ``result_format="json"`` or ``"bytes"``: nothing from the
        child is then unpickled, and its exceptions arrive as
        :class:`ChildError` carrying the type name, message and traceback text.
        """
        rc = await self.wait()
        core = self._core
        if core.setup_error is not None:
            raise core.setup_error
        if core.protocol_error is not None:
            raise ChildError(f"the child broke the result protocol: {core.protocol_error}")
        for frame in core.result_frames:
            return self._decode(frame)
        if core.truncated:
            raise ChildError(f"the child's result was truncated (it {_status(rc)})")
        if rc < 0:
            reason = self._guard.reason(rc) if self._guard is not None else "signal"
            if reason == "timeout":
                assert self._guard is not None
                raise TimeoutError(
                    f"the sandbox timed out after {self._guard.timeout:g} s and was killed"
                ) from ChildKilled(rc, reason)
            raise ChildKilled(rc, reason)
        raise ChildExited(rc)

    def _decode(self, frame: _frames.Frame) -> T:
        if frame.kind == "T":
            try:
                rec = _frames.decode_record(frame.payload)
            except _frames.ProtocolError as exc:
                raise ChildError(f"the child broke the result protocol: {exc}") from None
            tb = str(rec.get("traceback") or "") or None
            what = "" if rec.get("what") == "value" else f"{rec.get('type')}: "
            raise ChildError(f"{what}{rec.get('msg')}", tb)
        if self._format != "pickle":
            if frame.kind != "V":
                raise ChildError(f"the child sent a {frame.kind!r} frame in {self._format} mode")
            if self._format == "bytes":
                return frame.payload  # type: ignore[return-value]
            try:
                return json.loads(frame.payload)  # type: ignore[no-any-return]
            except ValueError as exc:
                raise ChildError(f"the child's value is not valid JSON: {exc}") from None
        try:
            obj = pickle.loads(frame.payload)
        except Exception as exc:
            raise ChildError(
                f"the child's {'value' if frame.kind == 'V' else 'exception'} "
                f"could not be unpickled: {exc!r}"
            ) from exc
        if frame.kind == "V":
            return obj  # type: ignore[no-any-return]
        if not (isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[0], BaseException)):
            raise ChildError("the child sent a malformed exception record")
        remote, tb = obj
        remote.__cause__ = RemoteTraceback(str(tb))
        raise remote


def _status(rc: int) -> str:
    return f"was killed by signal {-rc}" if rc < 0 else f"exited with status {rc}"


# -- validation -------------------------------------------------------------------


def check_pass_fds(pass_fds: Iterable[int]) -> tuple[int, ...]:
    """Validate ``pass_fds``: ints, open, not stdio duplicates."""
    if isinstance(pass_fds, (str, bytes)) or not isinstance(pass_fds, Iterable):
        raise TypeError(f"pass_fds must be an iterable of fds, not {type(pass_fds).__name__}")
    out = []
    for item in pass_fds:
        if isinstance(item, bool):
            raise TypeError("pass_fds: fds must be ints, not bool")
        try:
            fd = operator.index(item)
        except TypeError:
            raise TypeError(f"pass_fds: {item!r} is not an fd (int)") from None
        if fd < 0:
            raise ValueError(f"pass_fds: {fd} is negative")
        try:
            os.fstat(fd)
        except (OSError, OverflowError):  # OverflowError: beyond a C int, so not open either
            raise ValueError(f"pass_fds: fd {fd} is not open") from None
        out.append(fd)
    return tuple(sorted(set(out)))


def check_bool(value: object, field: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{field} must be a bool, not {type(value).__name__}")
    return value


def check_maps(flags: int, uid_map: MapSpec, gid_map: MapSpec, map_zero: object) -> MapPlan | None:
    check_bool(map_zero, "map_zero")
    wants = any(m not in (None, "", False) for m in (uid_map, gid_map)) or map_zero
    if wants and not flags & C.CLONE_NEWUSER:
        raise ValueError(
            "uid_map/gid_map/map_zero need a user namespace: add CLONE_NEWUSER to flags"
        )
    return plan_maps(uid_map, gid_map, bool(map_zero))


# -- spawn ------------------------------------------------------------------------


async def spawn(
    fn: Callable[..., T] | Callable[..., Awaitable[T]],
    flags: int = 0,
    *,
    args: Iterable[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    uid_map: MapSpec = None,
    gid_map: MapSpec = None,
    map_zero: bool = False,
    pass_fds: Iterable[int] = (),
    close_fds: bool = True,
    die_with_parent: bool = True,
    sandbox: Sandbox | None = None,
    result_format: ResultFormat = "pickle",
    new_session: bool = True,
) -> Child[T]:
    """Run ``fn(*args, **kwargs)`` in a child created with ``flags``.

    ``flags`` are ``CLONE_NEW*`` namespace flags (``CLONE_NEWUSER`` with
    ``map_zero=True`` makes the rest work unprivileged). ``fn`` may be an
    ``async def`` function: it runs on a fresh event loop in the child.
    Returns once the child has passed its setup and is running ``fn``.

    The child keeps only fds 0, 1, 2 and ``pass_fds`` (``close_fds=True``)
    and dies with the thread that spawned it (``die_with_parent=True``).
    With ``new_session=True`` (default) it starts a new session (``setsid``):
    code inside cannot signal our process group with ``kill(0, sig)``, and
    our terminal's Ctrl-C does not reach it.

    ``sandbox`` is a full isolation spec (:class:`~aiospaces.Sandbox`:
    mounts, hostname, network, ids, entering another process' namespaces);
    ``flags`` then add namespaces to it, and the maps go in the Sandbox.

    ``result_format`` says how the value travels back: ``"pickle"`` (any
    picklable value; the parent unpickles it, so only for trusted code),
    ``"json"`` or ``"bytes"`` (for untrusted code: nothing is unpickled).

    Cancellation: cancelling ``spawn()`` at any point kills the child
    through its pidfd, waits until it is reaped, closes its fds, and
    re-raises ``CancelledError``.

    >>> child = await spawn(os.getpid, CLONE_NEWUSER | CLONE_NEWPID, map_zero=True)  # doctest:+SKIP
    >>> await child.result()  # doctest: +SKIP
    1
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, not {type(fn).__name__}")
    flags = validate_flags(flags)
    if isinstance(args, (str, bytes)) or not isinstance(args, Iterable):
        raise TypeError(f"args must be a tuple or iterable, not {type(args).__name__}")
    args = tuple(args)
    if kwargs is None:
        kwargs = {}
    elif not isinstance(kwargs, Mapping):
        raise TypeError(f"kwargs must be a mapping, not {type(kwargs).__name__}")
    fds = check_pass_fds(pass_fds)
    check_bool(die_with_parent, "die_with_parent")
    check_bool(close_fds, "close_fds")
    check_bool(new_session, "new_session")
    if result_format not in RESULT_FORMATS:
        raise ValueError(f"result_format must be one of {RESULT_FORMATS}, not {result_format!r}")
    if sandbox is not None:
        return await _spawn_sandboxed(
            sandbox, fn, flags, args, kwargs, (uid_map, gid_map, map_zero), fds,
            close_fds, die_with_parent, result_format, new_session,
        )  # fmt: skip
    plan = ChildPlan(
        die_with_parent=die_with_parent,
        close_fds=close_fds,
        pass_fds=fds,
        new_pidns=bool(flags & C.CLONE_NEWPID),
        pid1_handlers=bool(flags & C.CLONE_NEWPID),
        new_session=new_session,
    )
    maps = check_maps(flags, uid_map, gid_map, map_zero)
    # Without child-side steps nothing in the child's setup can fail, so the
    # parent need not wait for its "running" frame: one wake-up less while
    # the fresh child still shares the parent's pages.
    wait_running = bool(plan.steps)
    body = _fn_body(fn, args, dict(kwargs), wait_running, result_format)
    core = await launch(flags, plan, body, maps=maps, started_on="R" if wait_running else "go")
    return Child(core, flags, result_format)


# -- spawn(sandbox=...) (the Sandbox compile contract: aiospaces/sandbox.py) -----------


async def _spawn_sandboxed(
    sandbox: Sandbox,
    fn: Callable[..., Any],
    flags: int,
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    maps_args: tuple[MapSpec, MapSpec, bool],
    fds: tuple[int, ...],
    close_fds: bool,
    die_with_parent: bool,
    result_format: str,
    new_session: bool,
) -> Child[Any]:
    if not isinstance(sandbox, Sandbox):
        raise TypeError(f"sandbox must be a Sandbox, not {type(sandbox).__name__}")
    uid_map, gid_map, map_zero = maps_args
    if uid_map not in (None, "", False) or gid_map not in (None, "", False) or map_zero:
        raise ValueError("with sandbox=, put uid_map/gid_map/map_zero in the Sandbox")
    with sandbox.compile(flags) as compiled:
        flags = compiled.flags
        plan = ChildPlan(
            die_with_parent=die_with_parent,
            close_fds=close_fds,
            pass_fds=tuple(sorted({*fds, *compiled.pass_fds})),
            new_pidns=bool(flags & C.CLONE_NEWPID),
            pid1_handlers=bool(flags & C.CLONE_NEWPID),
            steps=compiled.fn_steps,
            new_session=new_session,
        )
        wait_running = bool(plan.steps)
        body = _fn_body(fn, args, dict(kwargs), wait_running, result_format)
        core = await launch(
            flags,
            plan,
            body,
            maps=compiled.maps,
            parent_steps=compiled.parent_steps,
            started_on="R" if wait_running else "go",
            cgroup_fd=compiled.cgroup_fd,
        )
        guard = compiled.supervise(core)
    return Child(core, flags, result_format, guard)
