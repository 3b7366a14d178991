"""``SandboxPool``: run many tasks concurrently, each in its own sandbox.

>>> async with SandboxPool(size=8, flags=CLONE_NEWUSER | CLONE_NEWPID, map_zero=True) as pool:
...     print(await pool.run(pow, 2, 10))                    # doctest: +SKIP
...     async for square in pool.map(lambda x: x * x, range(100)):
...         ...                                              # doctest: +SKIP

At most ``size`` tasks run at once; further calls wait for a free slot
(backpressure: waiting tasks hold no process). Two modes:

``fresh=True`` (default)
    every task runs in a new child made by :func:`aiospaces.spawn` (clean
    state each time, like nsjail's once mode). ``fn`` may be any callable,
    closures and lambdas included: the child is a copy of the parent.
    By default a task whose ``fn`` and arguments can be pickled by
    reference goes through the loop's spawner process (see
    :func:`~aiospaces.spawn`: the child starts from a fresh import of fn's
    module, and the caller never forks; more than twice the tasks per
    second); any other task is forked from the caller. ``via="fork"`` or
    ``via="spawner"`` pins one way.

``fresh=False``
    warm workers: up to ``size`` long-lived children, each in its own
    namespaces, take tasks one at a time over a socket. ``fn`` and its
    arguments travel pickled, so they must pickle *by reference*
    (module-level functions, not lambdas or closures); a worker is replaced
    after ``max_tasks_per_worker`` tasks. State a task leaves behind in its
    worker (globals, files in its private /tmp) is seen by later tasks of
    the same worker.

Failures stay with their task: ``timeout`` kills the task's sandbox (its
worker, in warm mode) and raises :class:`TimeoutError`; a sandbox that
dies (segfault, ``os._exit``, OOM kill) fails its task with
:class:`~aiospaces.ChildKilled` / :class:`~aiospaces.ChildExited` and, in
warm mode, is replaced. The pool keeps serving.

Each task's child starts a new session (``setsid``) before running ``fn``,
so sandboxed code cannot signal the caller's process group with
``kill(0, sig)``.

By default results come back pickled and are unpickled in the caller:
isolation protects the host from what the code *does*, but a hostile task
can craft a pickle that runs code when it is loaded (returning "plain data"
does not help: the task can write to its channel directly). For untrusted
code use ``SandboxPool(..., result_format="json")`` (or ``"bytes"``), fresh
mode: nothing the task sends is then unpickled.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import functools
import inspect
import os
import pickle
import socket
import struct
import threading
import traceback
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
)
from types import TracebackType
from typing import Any, TypeVar

from ._body import VIAS
from ._errors import ChildError, ChildExited, ChildKilled
from ._spawn import Child, RemoteTraceback, spawn
from ._spawner import SpawnerUnsuitable, default_spawner
from .supervisor import kill_and_reap, spawn_options, wait_rc

__all__ = ["PoolExecutor", "SandboxPool"]

T = TypeVar("T")

# Task/result frames on a warm worker's socket: kind (1 byte) | length (8 bytes).
_HEADER = struct.Struct("!cQ")
_TASK = b"J"
_VALUE = b"V"  # pickled value
_EXC = b"X"  # pickled (exception, formatted traceback)
_TEXT = b"T"  # pickled (message, traceback) of str: what could not be pickled
_SPAWN_OPTIONS = frozenset(
    {
        "uid_map",
        "gid_map",
        "map_zero",
        "pass_fds",
        "close_fds",
        "die_with_parent",
        "result_format",
        "via",
        "spawner",
    }
)
# How long a recycled or idle worker may take to exit on EOF before SIGKILL.
_RETIRE_GRACE = 1.0


# -- the child side ---------------------------------------------------------------------


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _read_exact(fd: int, n: int) -> bytes | None:
    """``n`` bytes, or None on EOF (blocking: the worker's side)."""
    buf = bytearray()
    while len(buf) < n:
        chunk = os.read(fd, min(n - len(buf), 1 << 20))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def _send(fd: int, kind: bytes, payload: bytes) -> None:
    _write_all(fd, _HEADER.pack(kind, len(payload)))
    _write_all(fd, payload)


def _outcome(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    """Run one task; return its frame (SystemExit propagates: the worker exits)."""
    try:
        value = fn(*args, **kwargs)
        if inspect.isawaitable(value):
            value = asyncio.run(_await(value))
    except SystemExit:
        raise
    except BaseException as exc:
        tb = "".join(traceback.format_exception(exc))
        try:
            return _frame(_EXC, pickle.dumps((exc, tb), pickle.HIGHEST_PROTOCOL))
        except Exception as perr:
            msg = f"{type(exc).__qualname__}: {exc} (and it could not be pickled: {perr})"
            return _frame(_TEXT, pickle.dumps((msg, tb)))
    try:
        return _frame(_VALUE, pickle.dumps(value, pickle.HIGHEST_PROTOCOL))
    except Exception as perr:
        msg = f"fn returned a {type(value).__qualname__} that could not be pickled: {perr}"
        return _frame(_TEXT, pickle.dumps((msg, "".join(traceback.format_exception(perr)))))


async def _await(aw: Awaitable[Any]) -> Any:
    return await aw


def _frame(kind: bytes, payload: bytes) -> bytes:
    return _HEADER.pack(kind, len(payload)) + payload


def _worker_main(fd: int) -> None:
    """A warm worker: run tasks from ``fd`` until EOF."""
    with contextlib.suppress(OSError):
        os.setsid()
    while True:
        header = _read_exact(fd, _HEADER.size)
        if header is None:
            return
        _kind, size = _HEADER.unpack(header)
        payload = _read_exact(fd, size)
        if payload is None:
            return
        try:
            fn, args, kwargs = pickle.loads(payload)
        except Exception as exc:
            msg = f"the worker could not unpickle the task: {exc!r}"
            _write_all(fd, _frame(_TEXT, pickle.dumps((msg, ""))))
            continue
        _write_all(fd, _outcome(fn, args, kwargs))


# -- the parent side ------------------------------------------------------------------


def _decode(kind: bytes, payload: bytes) -> Any:
    if kind == _TEXT:
        msg, tb = pickle.loads(payload)
        raise ChildError(str(msg), str(tb) or None)
    try:
        obj = pickle.loads(payload)
    except Exception as exc:
        what = "value" if kind == _VALUE else "exception"
        raise ChildError(f"the task's {what} could not be unpickled: {exc!r}") from exc
    if kind == _VALUE:
        return obj
    if not (isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[0], BaseException)):
        raise ChildError("the worker sent a malformed exception record")
    remote, tb = obj
    remote.__cause__ = RemoteTraceback(str(tb))
    raise remote


class _Worker:
    """The parent's end of one warm worker."""

    __slots__ = ("child", "sock", "tasks")

    def __init__(self, child: Child[Any], sock: socket.socket) -> None:
        self.child = child
        self.sock = sock
        self.tasks = 0

    async def call(
        self, loop: asyncio.AbstractEventLoop, payload: bytes
    ) -> tuple[bytes, bytes] | None:
        """Send one task, return its (kind, payload); None if the worker died."""
        self.tasks += 1
        try:
            await loop.sock_sendall(self.sock, _frame(_TASK, payload))
            header = await self._recv(loop, _HEADER.size)
            if header is None:
                return None
            kind, size = _HEADER.unpack(header)
            body = await self._recv(loop, size)
        except (BrokenPipeError, ConnectionResetError):
            return None
        if body is None:
            return None
        return kind, body

    async def _recv(self, loop: asyncio.AbstractEventLoop, n: int) -> bytes | None:
        buf = bytearray()
        while len(buf) < n:
            chunk = await loop.sock_recv(self.sock, min(n - len(buf), 1 << 20))
            if not chunk:
                return None
            buf += chunk
        return bytes(buf)

    def close(self) -> None:
        self.sock.close()


def _failure(rc: int | None) -> Exception:
    if rc is None:
        return ChildError("the worker was reaped by someone else")
    if rc < 0:
        return ChildKilled(rc)
    return ChildExited(rc)


class SandboxPool:
    """Run tasks concurrently, each in a sandbox; at most ``size`` at once.

    ``flags`` (``CLONE_NEW*``) or ``sandbox`` (a :class:`~aiospaces.Sandbox`)
    say where tasks run; ``uid_map``, ``gid_map``, ``map_zero``,
    ``pass_fds``, ``close_fds``, ``die_with_parent``, ``result_format``,
    ``via`` and ``spawner`` go to :func:`~aiospaces.spawn`. See the module
    docstring for ``fresh`` and ``max_tasks_per_worker``.

    Use it as ``async with SandboxPool(...) as pool:``; leaving the block
    (or ``await pool.aclose()``) kills whatever still runs, reaps every
    child, and makes pending and later calls raise :class:`RuntimeError`.

    >>> async with SandboxPool(4, flags=CLONE_NEWUSER, map_zero=True) as pool:  # doctest: +SKIP
    ...     assert await pool.run(os.getuid) == 0
    """

    def __init__(
        self,
        size: int = 8,
        *,
        flags: int = 0,
        sandbox: object | None = None,
        fresh: bool = True,
        max_tasks_per_worker: int | None = None,
        **spawn_kwargs: Any,
    ) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be an int >= 1, not {size!r}")
        if not isinstance(fresh, bool):
            raise TypeError("fresh must be a bool")
        if max_tasks_per_worker is not None and (
            isinstance(max_tasks_per_worker, bool)
            or not isinstance(max_tasks_per_worker, int)
            or max_tasks_per_worker < 1
        ):
            raise ValueError("max_tasks_per_worker must be None or an int >= 1")
        unknown = set(spawn_kwargs) - _SPAWN_OPTIONS
        if unknown:
            raise TypeError(
                f"unexpected keyword argument(s) {', '.join(sorted(unknown))}; "
                f"spawn options are {', '.join(sorted(_SPAWN_OPTIONS))}"
            )
        self._size = size
        self._flags = flags
        self._fresh = fresh
        self._max_tasks = max_tasks_per_worker
        if spawn_kwargs.get("result_format", "pickle") != "pickle" and not fresh:
            raise ValueError(
                "result_format: warm workers send pickled results; use fresh=True "
                "for result_format='json' or 'bytes' (untrusted code)"
            )
        self._options = spawn_options(sandbox, spawn_kwargs)
        self._pass_fds = tuple(self._options.pop("pass_fds", ()))
        via = self._options.pop("via", None)
        if via is not None and via not in VIAS:
            raise ValueError(f"via must be one of {VIAS}, not {via!r}")
        if "spawner" in self._options and via == "fork":
            raise ValueError("spawner= and via='fork' contradict each other")
        # None: fresh tasks go through the spawner whenever fn can travel
        # (more than twice the throughput), and fork otherwise (closures).
        self._via: str | None = "spawner" if "spawner" in self._options else via
        self._loop: asyncio.AbstractEventLoop | None = None
        self._slots: asyncio.Semaphore | None = None
        self._closed = False
        self._close_done: asyncio.Future[None] | None = None
        self._active = 0
        self._drained: asyncio.Future[None] | None = None
        self._live: set[Child[Any]] = set()  # fresh-mode children running a task
        self._workers: set[_Worker] = set()  # every warm worker alive
        self._idle: list[_Worker] = []
        self._executors: list[PoolExecutor] = []

    @property
    def size(self) -> int:
        return self._size

    @property
    def fresh(self) -> bool:
        return self._fresh

    def __repr__(self) -> str:
        mode = "fresh" if self._fresh else f"warm workers={len(self._workers)}"
        state = "closed" if self._closed else "open"
        return f"<SandboxPool {state} size={self._size} {mode} active={self._active}>"

    async def __aenter__(self) -> SandboxPool:
        self._bind()
        if self._fresh and self._via in (None, "spawner"):
            # Start the spawner now rather than inside the first tasks (and
            # their timeouts). Its first task of each fn module still pays
            # for importing that module there.
            sp = self._options.get("spawner") or default_spawner()
            await sp.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _bind(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
            self._slots = asyncio.Semaphore(self._size)
        elif self._loop is not loop:
            raise RuntimeError("a SandboxPool is bound to the event loop it was first used on")
        return loop

    # -- running tasks -----------------------------------------------------------------
    async def run(self, fn: Callable[..., T] | Callable[..., Awaitable[T]], /, *args: Any,
                  timeout: float | None = None) -> T:  # fmt: skip  # noqa: ASYNC109
        """Run ``fn(*args)`` in a sandbox once a slot is free; return its value.

        ``fn``'s exception is re-raised (with the remote traceback as
        ``__cause__``); a sandbox that dies raises ``ChildKilled`` /
        ``ChildExited``. ``timeout`` (seconds) counts from the moment the
        task got its slot, not while it waits for one: when it expires the
        sandbox is killed and reaped and :class:`TimeoutError` is raised.
        For keyword arguments use :func:`functools.partial`.

        Cancellation: cancelling ``run()`` while it waits for a slot just
        gives up the wait; while the task runs, its sandbox (its worker, in
        warm mode) is killed and reaped before ``CancelledError`` propagates.

        >>> await pool.run(sum, [1, 2, 3], timeout=5)  # doctest: +SKIP
        6
        """
        return await self._submit(fn, args, timeout, None)  # type: ignore[no-any-return]

    async def map(
        self,
        fn: Callable[[Any], T] | Callable[[Any], Awaitable[T]],
        iterable: Iterable[Any] | AsyncIterable[Any],
        /,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - per task, counted from its slot
        window: int | None = None,
    ) -> AsyncIterator[T]:
        """Yield ``fn(item)`` for each item, in order, running up to ``size``
        at once. At most ``window`` (default ``2 * size``) items are taken
        from ``iterable`` ahead of the consumer, so a huge or endless
        iterable creates neither an unbounded queue nor extra processes.

        The first task that fails raises its exception out of the iteration
        (as ``Executor.map`` does) and the tasks started after it are
        cancelled (their sandboxes killed). Stopping early (``break``)
        cancels them too once the generator is closed: use
        ``contextlib.aclosing(pool.map(...))`` to make that immediate.

        Cancellation: cancelling the task that iterates raises
        ``CancelledError`` out of the iteration and cancels every task taken
        ahead (their sandboxes killed and reaped) once the generator closes.

        >>> async for y in pool.map(math.factorial, range(1000)):  # doctest: +SKIP
        ...     print(y)
        """
        loop = self._bind()
        if window is None:
            window = 2 * self._size
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError("window must be an int >= 1")
        source = _items(iterable)
        pending: collections.deque[asyncio.Future[Any]] = collections.deque()
        exhausted = False
        try:
            while True:
                while not exhausted and len(pending) < window:
                    try:
                        item = await anext(source)
                    except StopAsyncIteration:
                        exhausted = True
                        break
                    pending.append(loop.create_task(self._submit(fn, (item,), timeout, None)))
                if not pending:
                    return
                yield await pending.popleft()
        finally:
            for fut in pending:
                fut.cancel()
            if pending:
                await _wait_all(pending)
            await source.aclose()

    def executor(self) -> PoolExecutor:
        """A :class:`concurrent.futures.Executor` that submits to this pool,
        so ``await loop.run_in_executor(pool.executor(), fn, *args)`` runs
        ``fn`` in a sandbox. See :class:`PoolExecutor` for threads and
        ``shutdown()``. Call it while the pool's loop runs.
        """
        loop = self._bind()
        self._check_open()
        ex = PoolExecutor(self, loop)
        self._executors.append(ex)
        return ex

    async def _submit(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        timeout: float | None,  # noqa: ASYNC109
        on_start: Callable[[], bool] | None,
    ) -> Any:
        loop = self._bind()
        if not callable(fn):
            raise TypeError(f"fn must be callable, not {type(fn).__name__}")
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0
        ):
            raise ValueError("timeout must be None or a number > 0")
        payload = None if self._fresh else _pickle_task(fn, args)
        self._check_open()
        slots = self._slots
        assert slots is not None
        self._active += 1
        try:
            async with slots:
                self._check_open()
                if on_start is not None and not on_start():
                    return None  # an executor future cancelled while it waited
                deadline = asyncio.timeout(timeout)
                try:
                    async with deadline:
                        if payload is None:
                            return await self._run_fresh(fn, args)
                        return await self._run_warm(loop, payload)
                except TimeoutError:
                    if deadline.expired():
                        raise TimeoutError(
                            f"the task ran longer than its timeout ({timeout:g}s); "
                            "its sandbox was killed"
                        ) from None
                    raise
                except Exception as exc:
                    if self._closed:
                        raise RuntimeError("the SandboxPool was closed while the task ran") from exc
                    raise
        finally:
            self._active -= 1
            if self._active == 0 and self._drained is not None and not self._drained.done():
                self._drained.set_result(None)

    async def _run_fresh(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        # spawn() puts the child in a new session (new_session=True).
        child: Child[Any]
        if self._via is None:
            try:
                child = await spawn(
                    fn, self._flags, args=args, pass_fds=self._pass_fds, via="spawner",
                    **self._options,
                )  # fmt: skip
            except SpawnerUnsuitable:  # raised before any process exists
                child = await spawn(
                    fn, self._flags, args=args, pass_fds=self._pass_fds, via="fork",
                    **self._options,
                )  # fmt: skip
        else:
            child = await spawn(
                fn, self._flags, args=args, pass_fds=self._pass_fds,
                via=self._via,  # type: ignore[arg-type]
                **self._options,
            )  # fmt: skip
        self._live.add(child)
        try:
            async with child:
                self._check_open()
                return await child.result()
        finally:
            self._live.discard(child)

    async def _run_warm(self, loop: asyncio.AbstractEventLoop, payload: bytes) -> Any:
        worker = None
        while self._idle:
            worker = self._idle.pop()
            if worker.child.returncode is None:
                break
            await self._retire(worker, graceful=False)  # died while idle (OOM kill...)
            worker = None
        if worker is None:
            worker = await self._start_worker()
        reusable = False
        try:
            outcome = await worker.call(loop, payload)
            if outcome is None:
                rc = await wait_rc(worker.child)
                raise _failure(rc)
            reusable = True
        finally:
            if (
                reusable
                and not self._closed
                and (self._max_tasks is None or worker.tasks < self._max_tasks)
            ):
                self._idle.append(worker)
            else:
                await self._retire(worker, graceful=reusable)
        return _decode(*outcome)

    async def _start_worker(self) -> _Worker:
        parent, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            parent.setblocking(False)
            fd = child_end.fileno()
            child: Child[None] = await spawn(
                _worker_main,
                self._flags,
                args=(fd,),
                pass_fds=(*self._pass_fds, fd),
                **self._options,
            )
        except BaseException:
            parent.close()
            raise
        finally:
            child_end.close()
        worker = _Worker(child, parent)
        self._workers.add(worker)
        return worker

    async def _retire(self, worker: _Worker, *, graceful: bool) -> None:
        """Close the worker's socket (a graceful worker exits on EOF), then
        reap it; SIGKILL at once, or after a short grace. Cancel-safe."""
        self._workers.discard(worker)
        with contextlib.suppress(ValueError):
            self._idle.remove(worker)
        worker.close()
        if not graceful:
            await kill_and_reap(worker.child)
            return
        fut = asyncio.ensure_future(wait_rc(worker.child))
        try:
            await asyncio.wait([fut], timeout=_RETIRE_GRACE)
        finally:
            if not fut.done():
                await kill_and_reap(worker.child, fut)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the SandboxPool is closed")

    # -- closing ------------------------------------------------------------------------
    async def aclose(self) -> None:
        """Close the pool: refuse new tasks, kill running ones (their ``run()``
        raises ``RuntimeError``), let idle workers exit, reap every child.

        Cancellation: the children are still killed and reaped before
        ``CancelledError`` propagates.
        """
        if self._close_done is not None:
            await asyncio.shield(self._close_done)
            return
        loop = self._bind()
        self._closed = True
        self._close_done = loop.create_future()
        for ex in self._executors:
            ex._pool_closed()
        cancelled = False
        try:
            for child in list(self._live):
                with contextlib.suppress(ProcessLookupError):
                    child.kill()
            idle = set(self._idle)
            for worker in self._workers - idle:
                with contextlib.suppress(ProcessLookupError):
                    worker.child.kill()
            retiring = asyncio.ensure_future(
                asyncio.gather(*(self._retire(w, graceful=True) for w in idle))
            )
            if self._active:
                self._drained = loop.create_future()
            for fut in (self._drained, retiring):
                while fut is not None and not fut.done():
                    try:
                        await asyncio.shield(fut)
                    except asyncio.CancelledError:
                        cancelled = True
                        for worker in list(self._workers):
                            with contextlib.suppress(ProcessLookupError):
                                worker.child.kill()
            retiring.result()
        finally:
            self._close_done.set_result(None)
        if cancelled:
            raise asyncio.CancelledError


def _pickle_task(fn: Callable[..., Any], args: tuple[Any, ...]) -> bytes:
    try:
        return pickle.dumps((fn, args, {}), pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise TypeError(
            f"SandboxPool(fresh=False) sends fn and its arguments to a warm worker "
            f"with pickle, so they must pickle by reference (module-level functions and "
            f"classes, picklable arguments); {_name(fn)} could not: {exc}. "
            f"Use fresh=True for closures and lambdas."
        ) from exc


def _name(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


async def _items(iterable: Iterable[Any] | AsyncIterable[Any]) -> AsyncGenerator[Any, None]:
    if isinstance(iterable, AsyncIterable):
        async for item in iterable:
            yield item
    else:
        for item in iterable:
            yield item


async def _wait_all(futs: Iterable[asyncio.Future[Any]]) -> None:
    """Wait for every future to finish, even if cancelled meanwhile."""
    futs = list(futs)
    cancelled = False
    while not all(f.done() for f in futs):
        try:
            await asyncio.wait(futs)
        except asyncio.CancelledError:
            cancelled = True
    for f in futs:
        if not f.cancelled():
            f.exception()  # retrieved: a cancelled map's tail is not an error
    if cancelled:
        raise asyncio.CancelledError


# -- the Executor adapter ---------------------------------------------------------------


class PoolExecutor(concurrent.futures.Executor):
    """A :class:`concurrent.futures.Executor` over a :class:`SandboxPool`.

    ``submit(fn, *args, **kwargs)`` returns a ``concurrent.futures.Future``:
    pending while the task waits for a slot (``cancel()`` then works),
    running once it has one. ``loop.run_in_executor(executor, fn, *args)``
    works as with any executor.

    No threads: tasks run on the pool's event loop. ``submit`` may be called
    from the loop's thread or from any other thread (it then hands the task
    to the loop with ``call_soon_threadsafe``); ``Executor.map`` and
    ``Future.result()`` block, so call them only from another thread.

    ``shutdown(wait=True, cancel_futures=False)`` as ``concurrent.futures``
    documents it: no new submissions, ``cancel_futures`` cancels what has not
    started, ``wait`` blocks until the rest is done. Blocking on the loop's
    own thread would deadlock, so there ``shutdown(wait=True)`` with tasks
    still running raises :class:`RuntimeError`: ``await
    executor.ashutdown()`` instead. The pool's ``aclose()`` shuts down its
    executors (their unfinished futures fail with ``RuntimeError``).
    """

    def __init__(self, pool: SandboxPool, loop: asyncio.AbstractEventLoop) -> None:
        self._pool = pool
        self._loop = loop
        self._shutdown = False
        self._lock = threading.Lock()  # submit()/shutdown() may come from other threads
        self._futures: set[concurrent.futures.Future[Any]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def _on_loop_thread(self) -> bool:
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[T]:  # fmt: skip  # noqa: E501
        """Schedule ``fn(*args, **kwargs)`` on the pool; return its future."""
        if kwargs:
            fn = functools.partial(fn, **kwargs)
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._futures.add(fut)
        fut.add_done_callback(self._forget)
        if self._on_loop_thread():
            self._start(fut, fn, args)
        else:
            self._loop.call_soon_threadsafe(self._start, fut, fn, args)
        return fut

    def _forget(self, fut: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            self._futures.discard(fut)

    def _start(
        self, fut: concurrent.futures.Future[Any], fn: Callable[..., Any], args: tuple[Any, ...]
    ) -> None:
        if fut.cancelled():
            return
        task = self._loop.create_task(self._run(fut, fn, args))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(
        self, fut: concurrent.futures.Future[Any], fn: Callable[..., Any], args: tuple[Any, ...]
    ) -> None:
        try:
            value = await self._pool._submit(fn, args, None, fut.set_running_or_notify_cancel)
        except BaseException as exc:
            # (set_exception may race with a cancel() from another thread)
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                if not fut.done():
                    cancelled = isinstance(exc, asyncio.CancelledError)
                    fut.set_exception(RuntimeError("the task was cancelled") if cancelled else exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        if fut.running():
            fut.set_result(value)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No new tasks; optionally cancel pending ones; optionally wait (from
        another thread only, see the class docstring)."""
        with self._lock:
            self._shutdown = True
            futures = list(self._futures)
        if cancel_futures:
            for f in futures:
                f.cancel()
        if not wait:
            return
        left = [f for f in futures if not f.done()]
        if not left:
            return
        if self._on_loop_thread():
            raise RuntimeError(
                "shutdown(wait=True) on the event loop's thread would deadlock while "
                f"{len(left)} task(s) run: use `await executor.ashutdown()` or wait=False"
            )
        concurrent.futures.wait(left)

    async def ashutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """``shutdown()`` for the loop's thread: awaits instead of blocking.

        Cancellation: only the waiting is cancelled.
        """
        self.shutdown(wait=False, cancel_futures=cancel_futures)
        if wait:
            with self._lock:
                left = [asyncio.wrap_future(f, loop=self._loop) for f in self._futures]
            if left:
                await asyncio.wait(left)

    def _pool_closed(self) -> None:
        with self._lock:
            self._shutdown = True
