"""``spawn()`` and :class:`Child`: run a Python callable in new namespaces.

The child is a copy of the parent (clone3 without ``CLONE_VM``), so ``fn``
may be any callable: closures and lambdas included. Its return value comes
back pickled over the child's channel.
"""

from __future__ import annotations

import json
import operator
import os
import pickle
import signal
import time
import types
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Generic, TypeVar

from . import _frames
from ._body import RESULT_FORMATS, VIAS, ResultFormat, Via, _fn_body
from ._child import ChildPlan
from ._errors import ChildError, ChildExited, ChildKilled
from ._handle import ProcessHandle
from ._launch import Launched, ParentStep, StartedOn, launch, launch_remote
from ._linux import constants as C
from ._linux import validate_flags
from ._spawner import Spawner, SpawnerUnsuitable, default_spawner
from ._spawner_main import MAX_MSG
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
    via: Via = "auto",
    spawner: Spawner | None = None,
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

    ``via`` says who clones the child. ``"fork"``: this process (the child
    is a copy of it, so closures, lambdas and any argument work, but the
    cost grows with this process' size and the event loop is blocked while
    the kernel copies its page tables). ``"spawner"``: a small spawner
    process started once per event loop (:class:`~aiospaces.Spawner`):
    the cost no longer depends on this process' size and the loop never
    forks, but ``fn`` and its arguments are pickled (``fn`` must be
    importable: a module-level function, not a closure, a lambda or from
    ``__main__``) and the child starts from a fresh import of fn's module,
    with this process' current environment and working directory.
    ``"auto"`` (default): the spawner once this process is large (resident
    size of 128 MiB or more, where a fork costs more than the spawner's
    round trip) and ``fn`` and its arguments can go there; else fork.
    ``spawner=`` picks an explicit Spawner.

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
    if via not in VIAS:
        raise ValueError(f"via must be one of {VIAS}, not {via!r}")
    if spawner is not None:
        if not isinstance(spawner, Spawner):
            raise TypeError(f"spawner must be a Spawner, not {type(spawner).__name__}")
        if via == "fork":
            raise ValueError("spawner= and via='fork' contradict each other")
        via = "spawner"
    if sandbox is not None:
        return await _spawn_sandboxed(
            sandbox, fn, flags, args, kwargs, (uid_map, gid_map, map_zero), fds,
            close_fds, die_with_parent, result_format, new_session, via, spawner,
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
    core = await _launch_fn(
        via, spawner, fn, args, kwargs, flags, plan, result_format, maps, (), -1
    )
    return Child(core, flags, result_format)


async def _launch_fn(
    via: str,
    spawner: Spawner | None,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    flags: int,
    plan: ChildPlan,
    fmt: str,
    maps: MapPlan | None,
    parent_steps: Sequence[ParentStep],
    cgroup_fd: int,
) -> Launched:
    """Clone through the spawner or by forking (``via``), same handshake."""
    # Without child-side steps nothing in the child's setup can fail, so the
    # parent need not wait for its "running" frame: one wake-up less while
    # the fresh child still shares the parent's pages.
    wait_running = bool(plan.steps)
    started_on: StartedOn = "R" if wait_running else "go"
    request = _via_spawner(via, fn, args, kwargs, plan, fmt, wait_running)
    if request is not None:
        return await launch_remote(
            spawner or default_spawner(),
            flags,
            plan,
            request,
            maps=maps,
            parent_steps=parent_steps,
            started_on=started_on,
            cgroup_fd=cgroup_fd,
        )
    body = _fn_body(fn, args, dict(kwargs), wait_running, fmt)
    return await launch(
        flags,
        plan,
        body,
        maps=maps,
        parent_steps=parent_steps,
        started_on=started_on,
        cgroup_fd=cgroup_fd,
    )


AUTO_SPAWNER_RSS = 128 << 20
"""``via="auto"`` uses the spawner from this resident size on. Below it a
fork of this process costs about what the spawner's own fork does (the
spawner holds fn's modules too), so fork semantics are kept; above it the
copy of the page tables dominates and grows with the size (a 1 GiB parent
forks about 10x slower than a 50 MiB one, with the loop blocked)."""

_rss_cache = [0.0, 0]  # [monotonic time read, bytes]


def parent_is_large() -> bool:
    """Is this process' resident size at least :data:`AUTO_SPAWNER_RSS`?"""
    now = time.monotonic()
    if now - _rss_cache[0] > 1.0:  # /proc read at most once a second
        try:
            with open("/proc/self/statm", "rb") as f:
                _rss_cache[1] = int(f.read().split()[1]) * _PAGE
        except (OSError, ValueError, IndexError):
            _rss_cache[1] = 0
        _rss_cache[0] = now
    return _rss_cache[1] >= AUTO_SPAWNER_RSS


_PAGE = os.sysconf("SC_PAGE_SIZE")
SPAWNER_MAX_ARGS = MAX_MSG - (64 << 10)  # the rest of a request: plan, env, cwd


def _via_spawner(
    via: str,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    plan: ChildPlan,
    fmt: str,
    wait_running: bool,
) -> tuple[bytes, bytes, str, bool] | None:
    """The spawner request for this spawn, or None to fork.

    ``via="spawner"`` raises :class:`SpawnerUnsuitable` saying what cannot
    travel; ``"auto"`` falls back to fork instead.
    """
    if via == "fork" or (via == "auto" and not parent_is_large()):
        return None
    why = ""
    fnref = work = b""
    if plan.pass_fds:
        why = "pass_fds: fds cannot be handed to a child of the spawner; use via='fork'"
    elif getattr(fn, "__module__", None) == "__main__":
        why = (
            f"fn: {getattr(fn, '__qualname__', fn)!r} is defined in __main__, which the "
            "spawner cannot import; move it to a module or use via='fork'"
        )
    else:
        try:
            fnref = pickle.dumps(fn, pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            why = (
                f"fn: {getattr(fn, '__qualname__', fn)!r} cannot be pickled by reference "
                f"({exc}); closures and lambdas need via='fork'"
            )
        else:
            try:
                # fn travels once, as fnref (the spawner imports its module).
                work = pickle.dumps((args, dict(kwargs)), pickle.HIGHEST_PROTOCOL)
                steps = pickle.dumps(plan.steps, pickle.HIGHEST_PROTOCOL) if plan.steps else b""
            except Exception as exc:
                why = (
                    f"args/kwargs/sandbox: cannot be pickled for the spawner ({exc}); "
                    "use via='fork'"
                )
            else:
                size = len(work) + len(steps)
                if size > SPAWNER_MAX_ARGS:
                    why = (
                        f"args/kwargs: {size} bytes pickled, over the spawner's "
                        f"{SPAWNER_MAX_ARGS}; pass large data another way (a file, "
                        "pass_fds with via='fork') or use via='fork'"
                    )
    if why:
        if via == "spawner":
            raise SpawnerUnsuitable(why)
        return None
    return (fnref, work, fmt, wait_running)


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
    via: str = "auto",
    spawner: Spawner | None = None,
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
        core = await _launch_fn(
            via,
            spawner,
            fn,
            args,
            kwargs,
            flags,
            plan,
            result_format,
            compiled.maps,
            compiled.parent_steps,
            compiled.cgroup_fd,
        )
        guard = compiled.supervise(core)
    return Child(core, flags, result_format, guard)
