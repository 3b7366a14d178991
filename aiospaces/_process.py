"""Exec mode: ``create_process()`` → :class:`Process`, and ``run()``.

The same handshake as :func:`aiospaces.spawn` (clone3, id maps written by the
parent, the "go" byte), then the child becomes the program:

* without a new pid namespace, or with ``as_pid_1=True``, the cloned child
  wires its stdio, writes ``R`` and calls ``execve`` for each ``PATH``
  candidate; its channel end is close-on-exec, so EOF after ``R`` means the
  program runs, and an ``E`` record means every candidate failed (rebuilt
  into ``FileNotFoundError``/``PermissionError`` as :mod:`subprocess` does);
* with ``CLONE_NEWPID`` (and ``as_pid_1=False``), the cloned child is PID 1,
  a small init that starts the program and reports its returncode: see
  :mod:`aiospaces._init` for that protocol.

Everything the child needs — argv and environment as bytes, the ``PATH``
candidates, the stdio fds and where they go — is prepared in the parent, so
the child runs a few dozen bytecodes between the "go" byte and ``execve``.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # the C module: no enum wrapping
import asyncio
import contextlib
import errno
import fcntl
import io
import os
import signal
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any, TypeAlias

from . import _fastexec, _frames, _init
from ._aio import settle
from ._child import ChildPlan
from ._handle import ProcessHandle
from ._launch import Launched, launch
from ._linux import constants as C
from ._linux import validate_flags
from ._spawn import check_bool, check_maps, check_pass_fds
from .idmap import MapPlan, MapSpec
from .limits import Rlimit, SandboxGuard
from .sandbox import CompiledSandbox, Sandbox

__all__ = [
    "DEVNULL",
    "PIPE",
    "STDOUT",
    "CompletedRun",
    "Process",
    "RunTimeout",
    "create_process",
    "run",
]

PIPE = subprocess.PIPE
STDOUT = subprocess.STDOUT
DEVNULL = subprocess.DEVNULL

StrOrBytesPath: TypeAlias = "str | bytes | os.PathLike[str] | os.PathLike[bytes]"
StdioSpec: TypeAlias = "int | IO[Any] | None"

# Bytes a stream's StreamReader buffers before pausing the pipe.
STREAM_LIMIT = 1 << 18
READ_SIZE = 1 << 18
EXIT_EXEC_FAILED = 125


# -- errors and results ----------------------------------------------------------


class RunTimeout(subprocess.TimeoutExpired, TimeoutError):
    """:func:`run` timed out: the sandbox was killed and reaped.

    Both a :class:`TimeoutError` (``errno.ETIMEDOUT``) and a
    :class:`subprocess.TimeoutExpired`: ``cmd``, ``timeout`` and the output
    captured so far in ``stdout``/``output`` and ``stderr``.

    >>> try:                                                   # doctest: +SKIP
    ...     await run(["sleep", "9"], timeout=0.1)
    ... except TimeoutError as exc:
    ...     print(exc.timeout, exc.stdout)
    0.1 None
    """

    def __init__(
        self,
        cmd: Sequence[str | bytes],
        timeout: float,
        output: bytes | None = None,
        stderr: bytes | None = None,
    ) -> None:
        TimeoutError.__init__(self, errno.ETIMEDOUT, f"timed out after {timeout} seconds")
        subprocess.TimeoutExpired.__init__(self, cmd, timeout, output, stderr)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.cmd, self.timeout, self.output, self.stderr))


class CompletedRun(subprocess.CompletedProcess[bytes]):
    """:func:`run`'s result: a :class:`subprocess.CompletedProcess` that also
    says whether ``max_output`` cut a stream short.

    >>> done = await run(["yes"], stdout=PIPE, max_output=10, timeout=5)  # doctest: +SKIP
    >>> done.stdout, done.stdout_truncated
    (b'y\\ny\\ny\\ny\\ny\\n', True)
    """

    stdout_truncated: bool
    stderr_truncated: bool

    def __init__(
        self,
        args: Any,
        returncode: int,
        stdout: bytes | None = None,
        stderr: bytes | None = None,
        *,
        stdout_truncated: bool = False,
        stderr_truncated: bool = False,
    ) -> None:
        super().__init__(args, returncode, stdout, stderr)
        self.stdout_truncated = stdout_truncated
        self.stderr_truncated = stderr_truncated

    @property
    def truncated(self) -> bool:
        """Output was dropped past ``max_output`` on stdout or stderr."""
        return self.stdout_truncated or self.stderr_truncated

    def __repr__(self) -> str:
        text = super().__repr__()
        if self.truncated:
            text = text[:-1] + f", stdout_truncated={self.stdout_truncated}, "
            text += f"stderr_truncated={self.stderr_truncated})"
        return text


# -- validation (before any fd or process exists) --------------------------------


def _check_argv(argv: object) -> tuple[tuple[bytes, ...], list[str | bytes]]:
    if isinstance(argv, (str, bytes, os.PathLike)):
        raise TypeError(
            f"argv must be a sequence of arguments, not a single {type(argv).__name__} "
            f"(did you mean [{argv!r}]?)"
        )
    if not isinstance(argv, Iterable):
        raise TypeError(f"argv must be a sequence of arguments, not {type(argv).__name__}")
    out: list[bytes] = []
    shown: list[str | bytes] = []
    for i, arg in enumerate(argv):
        if not isinstance(arg, (str, bytes, os.PathLike)):
            raise TypeError(
                f"argv[{i}] must be str, bytes or os.PathLike, not {type(arg).__name__}"
            )
        raw = os.fsencode(arg)
        if b"\0" in raw:
            raise ValueError(f"argv[{i}] contains a NUL byte")
        out.append(raw)
        path = os.fspath(arg)
        shown.append(path)
    if not out:
        raise ValueError("argv must not be empty: it names the program")
    if not out[0]:
        raise ValueError("argv[0] (the program) must not be empty")
    return tuple(out), shown


def _check_env(env: object) -> dict[bytes, bytes]:
    if env is None:
        # os.environb's own dict: going through the mapping decodes and
        # re-encodes every variable, on every spawn.
        raw = getattr(os.environb, "_data", None)
        return dict(raw) if isinstance(raw, dict) else dict(os.environb)
    if not isinstance(env, Mapping):
        raise TypeError(f"env must be a mapping, not {type(env).__name__}")
    out: dict[bytes, bytes] = {}
    for key, value in env.items():
        if not isinstance(key, (str, bytes)) or not isinstance(value, (str, bytes)):
            raise TypeError(f"env: keys and values must be str or bytes, not {key!r}: {value!r}")
        k, v = os.fsencode(key), os.fsencode(value)
        if not k or b"=" in k:
            raise ValueError(f"env: illegal variable name {key!r}")
        if b"\0" in k or b"\0" in v:
            raise ValueError(f"env: {key!r} contains a NUL byte")
        out[k] = v
    return out


def _check_path(value: object, field: str) -> bytes | None:
    if value is None:
        return None
    if not isinstance(value, (str, bytes, os.PathLike)):
        raise TypeError(
            f"{field} must be a path (str, bytes, os.PathLike), not {type(value).__name__}"
        )
    raw = os.fsencode(value)
    if not raw or b"\0" in raw:
        raise ValueError(f"{field} must be a non-empty path without NUL bytes")
    return raw


def _candidates(program: bytes, env: dict[bytes, bytes]) -> tuple[bytes, ...]:
    """Where ``execve`` will look, as ``subprocess``/``os.execvpe`` do."""
    if b"/" in program:
        return (program,)
    # os.get_exec_path() reads b"PATH" from a bytes environment too.
    dirs = os.get_exec_path(env)  # type: ignore[arg-type]
    return tuple(os.path.join(os.fsencode(d), program) for d in dirs)


_Norm: TypeAlias = "int | str | None"  # fd, "pipe"/"devnull"/"stdout", or None


def _check_stdio(value: object, field: str) -> _Norm:
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError(f"{field} must be PIPE, DEVNULL, STDOUT, an fd or a file, not bool")
    if isinstance(value, int):
        if value == PIPE:
            return "pipe"
        if value == DEVNULL:
            return "devnull"
        if value == STDOUT:
            if field != "stderr":
                raise ValueError(f"STDOUT is only valid for stderr, not {field}")
            return "stdout"
        if value < 0:
            raise ValueError(f"{field}: {value} is not an fd nor PIPE/DEVNULL/STDOUT")
        fd = value
    elif hasattr(value, "fileno"):
        try:
            fd = value.fileno()
        except (OSError, ValueError) as exc:
            raise ValueError(f"{field}: the file object has no usable fileno(): {exc}") from None
        if not isinstance(fd, int):
            raise TypeError(f"{field}: fileno() returned {type(fd).__name__}, not int")
    else:
        raise TypeError(
            f"{field} must be PIPE, DEVNULL, STDOUT, an fd or a file object, "
            f"not {type(value).__name__}"
        )
    try:
        os.fstat(fd)
    except (OSError, OverflowError):  # OverflowError: beyond a C int, so not open either
        raise ValueError(f"{field}: fd {fd} is not open") from None
    return fd


# -- the stdio plan ---------------------------------------------------------------


def _high_cloexec(fd: int) -> int:
    """A close-on-exec copy of ``fd`` numbered 3 or above."""
    return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)


def _lift(fd: int) -> int:
    """``fd`` itself if it is 3 or above, else a high copy (``fd`` closed)."""
    if fd >= 3:
        return fd
    try:
        return _high_cloexec(fd)
    finally:
        os.close(fd)


@dataclass(slots=True)
class _Stdio:
    """The fds made for one process; the parent closes ``sources`` after the
    launch, and ``parent_ends`` become the streams."""

    sources: list[int]  # child-side fds, each >= 3 and close-on-exec
    dups: list[tuple[int, int]]  # (source, 0/1/2), applied in order
    stderr_to_stdout: bool
    parent_ends: dict[int, int]  # 0 → write end of stdin, 1/2 → read ends

    def close_sources(self) -> None:
        while self.sources:
            with contextlib.suppress(OSError):
                os.close(self.sources.pop())

    def close_all(self) -> None:
        self.close_sources()
        while self.parent_ends:
            _, fd = self.parent_ends.popitem()
            with contextlib.suppress(OSError):
                os.close(fd)


def _open_stdio(specs: tuple[_Norm, _Norm, _Norm]) -> _Stdio:
    io_ = _Stdio([], [], False, {})
    try:
        devnull = -1
        for target, spec in enumerate(specs):
            if spec is None:
                continue
            if spec == "stdout":
                io_.stderr_to_stdout = True
                continue
            if spec == "devnull":
                if devnull < 0:
                    devnull = _lift(os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC))
                    io_.sources.append(devnull)
                src = devnull
            elif spec == "pipe":
                r, w = os.pipe()
                child_end, parent_end = (r, w) if target == 0 else (w, r)
                io_.parent_ends[target] = parent_end
                io_.sources.append(child_end)  # owned before it is lifted
                src = _lift(child_end)
                io_.sources[-1] = src
            else:
                assert isinstance(spec, int)
                src = _high_cloexec(spec)
                io_.sources.append(src)
            io_.dups.append((src, target))
    except BaseException:
        io_.close_all()
        raise
    return io_


# -- the child's bodies -------------------------------------------------------------


_ExecPlan = _fastexec.ExecPlan


_SIG_DFL = int(_signal.SIG_DFL)


def _exec_body(plan: _ExecPlan) -> Callable[[int], int]:
    """The cloned child becomes the program (no init)."""

    def body(sock: int) -> int:
        if sock < 3:  # the parent had stdio closed: keep dup2 off the channel
            high = fcntl.fcntl(sock, fcntl.F_DUPFD_CLOEXEC, 3)
            os.close(sock)
            sock = high
        else:
            os.set_inheritable(sock, False)  # close_fds made it inheritable
        for src, dst in plan.dups:
            os.dup2(src, dst)
        for src in plan.sources:
            os.close(src)
        if plan.stderr_to_stdout:
            os.dup2(1, 2)
        for sig in _init.DEFAULT_FOR_PROGRAM:
            _signal.signal(sig, _SIG_DFL)
        if plan.cwd is not None:
            try:
                os.chdir(plan.cwd)
            except OSError as exc:
                return _report(sock, exc, "chdir", os.fsdecode(plan.cwd))
        _frames.write_all(sock, _frames.RUNNING)
        saved: OSError | None = None
        last: OSError | None = None
        for path in plan.candidates:
            try:
                os.execve(path, plan.argv, plan.env)
            except OSError as exc:
                last = exc
                if saved is None and exc.errno not in (errno.ENOENT, errno.ENOTDIR):
                    saved = exc
        err = saved or last or OSError(errno.ENOENT, os.strerror(errno.ENOENT))
        return _report(sock, err, "execve", plan.program)

    return body


def _report(sock: int, exc: OSError, step: str, filename: str) -> int:
    rec = OSError(exc.errno or 0, exc.strerror or str(exc), filename)
    _frames.write_all(sock, _frames.encode(b"E", _frames.setup_record(rec, step)))
    return EXIT_EXEC_FAILED


def _init_body(plan: _init.InitPlan) -> Callable[[int], int]:
    def body(sock: int) -> int:
        return _init.run_init(sock, plan)

    return body


def _file_actions(io_: _Stdio) -> tuple[tuple[int, ...], ...]:
    acts: list[tuple[int, ...]] = [(os.POSIX_SPAWN_DUP2, src, dst) for src, dst in io_.dups]
    if io_.stderr_to_stdout:
        acts.append((os.POSIX_SPAWN_DUP2, 1, 2))
    acts.extend((os.POSIX_SPAWN_CLOSE, src) for src in dict.fromkeys(io_.sources))
    return tuple(acts)


# -- the handle -------------------------------------------------------------------


class _Capture:
    """Output read so far, per stream, bounded by ``limit`` bytes."""

    __slots__ = ("bufs", "limit", "truncated")

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.bufs = [bytearray(), bytearray()]
        self.truncated = [False, False]

    def add(self, i: int, chunk: bytes) -> None:
        buf = self.bufs[i]
        if self.limit is not None:
            room = self.limit - len(buf)
            if len(chunk) > room:
                self.truncated[i] = True
                chunk = chunk[: max(room, 0)]
        buf += chunk


class Process(ProcessHandle):
    """A program started by :func:`create_process`. No public constructor.

    Shaped like :class:`asyncio.subprocess.Process`: ``pid``, ``returncode``
    (``None`` while it runs, ``-N`` if signal N killed it), ``stdin``
    (:class:`asyncio.StreamWriter`), ``stdout``/``stderr``
    (:class:`asyncio.StreamReader`) for the streams opened with ``PIPE``,
    :meth:`communicate`, :meth:`wait`, and signals sent through the pidfd.

    In a new pid namespace (``as_pid_1=False``) ``pid`` is the sandbox's init
    (PID 1 inside); signals go to it and it forwards SIGTERM, SIGINT, SIGHUP,
    SIGQUIT, SIGUSR1 and SIGUSR2 to the program, while SIGKILL ends the whole
    sandbox. ``returncode`` is the program's, as the init reported it.

    Cancellation: cancelling :meth:`wait` leaves the process alone;
    cancelling :meth:`communicate` kills it (the whole sandbox with an init)
    and waits until it is reaped before ``CancelledError`` propagates;
    leaving ``async with`` kills and reaps it and closes its streams.

    >>> async with await create_process(["cat"], stdin=PIPE, stdout=PIPE) as proc:  # doctest: +SKIP
    ...     out, _ = await proc.communicate(b"hi")
    >>> out, proc.returncode  # doctest: +SKIP
    (b'hi', 0)
    """

    __slots__ = ("_args", "_init", "_transports", "stderr", "stdin", "stdout")

    stdin: asyncio.StreamWriter | None
    stdout: asyncio.StreamReader | None
    stderr: asyncio.StreamReader | None

    def __init__(
        self,
        core: Launched,
        flags: int,
        args: list[str | bytes],
        with_init: bool,
        guard: SandboxGuard | None = None,
    ) -> None:
        super().__init__(core, flags, guard)
        self._args = args
        self._init = with_init
        self._transports: list[asyncio.BaseTransport] = []
        self.stdin = None
        self.stdout = None
        self.stderr = None

    @property
    def args(self) -> list[str | bytes]:
        return self._args

    @property
    def returncode(self) -> int | None:
        core = self._core
        if core.returncode is None:
            return None
        if self._init:
            for frame in core.result_frames:
                if frame.kind == "S":
                    rc = _init.decode_status(frame.payload)
                    if rc is not None:
                        return rc
        return core.returncode

    def __repr__(self) -> str:
        return f"<Process pid={self.pid} {self._state()} args={self._args!r}>"

    def terminate(self) -> None:
        """SIGTERM (forwarded to the program by the init, if there is one)."""
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL: with an init, this ends everything in the sandbox."""
        self.send_signal(signal.SIGKILL)

    async def wait(self) -> int:
        """Wait until the process has exited and is reaped; return ``returncode``.

        Does not read the pipes: a program blocked writing to a full
        ``stdout`` pipe nobody reads never exits (use :meth:`communicate`).
        Raises :class:`~aiospaces.ChildLost` if something else reaped it.
        """
        await self._reaped()
        rc = self.returncode
        assert rc is not None
        return rc

    async def communicate(self, input: bytes | None = None) -> tuple[bytes | None, bytes | None]:
        """Send ``input`` to stdin and close it, read stdout and stderr to EOF,
        wait for the process; return ``(stdout, stderr)`` (``None`` for a
        stream that is not a ``PIPE``).

        Cancellation kills the process (the whole sandbox, with an init) and
        waits until it is reaped before ``CancelledError`` propagates: the
        streams are half read by then, so nothing could resume it.
        """
        cap = _Capture(None)
        await self._communicate(input, cap)
        return self._outputs(cap)

    def _outputs(self, cap: _Capture) -> tuple[bytes | None, bytes | None]:
        return (
            bytes(cap.bufs[0]) if self.stdout is not None else None,
            bytes(cap.bufs[1]) if self.stderr is not None else None,
        )

    async def _communicate(self, input: bytes | None, cap: _Capture) -> None:
        if input is not None and self.stdin is None:
            raise ValueError("communicate(input): stdin is not a PIPE")
        try:
            aws = []
            if self.stdin is not None:
                aws.append(self._feed(self.stdin, input))
            if self.stdout is not None:
                aws.append(self._drain(self.stdout, cap, 0))
            if self.stderr is not None:
                aws.append(self._drain(self.stderr, cap, 1))
            if aws:
                await asyncio.gather(*aws)
            await self.wait()
        except BaseException:
            await self._abort()
            raise
        self._close_transports()

    @staticmethod
    async def _feed(writer: asyncio.StreamWriter, data: bytes | None) -> None:
        try:
            if data:
                writer.write(data)
                await writer.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the program does not read its input: as asyncio does
        writer.close()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            await writer.wait_closed()

    @staticmethod
    async def _drain(reader: asyncio.StreamReader, cap: _Capture, i: int) -> None:
        while True:
            chunk = await reader.read(READ_SIZE)
            if not chunk:
                return
            cap.add(i, chunk)

    def _close_transports(self) -> None:
        while self._transports:
            self._transports.pop().close()

    async def _abort(self) -> None:
        """Kill, reap (even if cancelled meanwhile), close the streams."""
        self._close_transports()
        await self._core.kill_and_reap()


def _const(proto: asyncio.StreamReaderProtocol) -> Callable[[], asyncio.StreamReaderProtocol]:
    return lambda: proto


async def _connect(proc: Process, ends: dict[int, int]) -> None:
    loop = asyncio.get_running_loop()
    # Wrapped first, so that every fd has an owner that closes it.
    files: dict[int, io.FileIO] = {}
    try:
        for target in (0, 1, 2):
            if target in ends:
                files[target] = io.FileIO(ends.pop(target), "wb" if target == 0 else "rb")
    finally:
        for fd in ends.values():
            os.close(fd)
        ends.clear()
    try:
        for target, pipe in list(files.items()):
            if target == 0:
                wproto = asyncio.StreamReaderProtocol(asyncio.StreamReader(), loop=loop)
                wt, _ = await loop.connect_write_pipe(_const(wproto), pipe)
                del files[target]
                proc._transports.append(wt)
                proc.stdin = asyncio.StreamWriter(wt, wproto, None, loop)
            else:
                reader = asyncio.StreamReader(limit=STREAM_LIMIT, loop=loop)
                rproto = asyncio.StreamReaderProtocol(reader, loop=loop)
                rt, _ = await loop.connect_read_pipe(_const(rproto), pipe)
                del files[target]
                proc._transports.append(rt)
                if target == 1:
                    proc.stdout = reader
                else:
                    proc.stderr = reader
    finally:
        for f in files.values():
            with contextlib.suppress(OSError):  # a transport may own it already
                f.close()


async def _connect_uncancelled(proc: Process, ends: dict[int, int]) -> None:
    """:func:`_connect`, never interrupted half-way by a cancellation.

    A pipe transport cancelled while it is being made may or may not own its
    fd already (uvloop takes it early): finishing the few steps first keeps
    the ownership clear; then the cancellation is delivered.
    """
    task = asyncio.ensure_future(_connect(proc, ends))
    cancelled = await settle(task)
    task.result()
    if cancelled:
        raise asyncio.CancelledError


# -- entry points -----------------------------------------------------------------


async def create_process(
    argv: Sequence[StrOrBytesPath],
    flags: int = 0,
    *,
    stdin: StdioSpec = None,
    stdout: StdioSpec = None,
    stderr: StdioSpec = None,
    env: Mapping[str, str] | Mapping[bytes, bytes] | None = None,
    cwd: StrOrBytesPath | None = None,
    pass_fds: Iterable[int] = (),
    close_fds: bool = True,
    uid_map: MapSpec = None,
    gid_map: MapSpec = None,
    map_zero: bool = False,
    as_pid_1: bool = False,
    die_with_parent: bool = True,
    sandbox: Sandbox | None = None,
    new_session: bool = True,
) -> Process:
    """Start ``argv`` in new namespaces (``flags``); return a :class:`Process`.

    Like :func:`asyncio.create_subprocess_exec`: ``stdin``/``stdout``/
    ``stderr`` take ``PIPE``, ``DEVNULL``, ``STDOUT`` (stderr only), an fd
    or a file object; ``None`` inherits ours. The program is looked up on
    ``PATH`` of ``env`` (ours when ``env`` is ``None``), and a failed
    ``execve`` raises :class:`FileNotFoundError`, :class:`PermissionError`
    (...) with the program as ``filename``; a failed setup step (``chdir``,
    the id maps) raises :class:`~aiospaces.SpawnError` naming it.

    With ``CLONE_NEWPID`` the program runs under a small init (PID 1) that
    forwards signals, reaps orphans, and takes everything in the namespace
    down with it when the program exits; ``as_pid_1=True`` makes the program
    PID 1 itself (it then ignores signals it has no handler for, except
    SIGKILL). The child keeps fds 0-2 and ``pass_fds`` (``close_fds=True``)
    and dies with the thread that started it (``die_with_parent=True``).
    With ``new_session=True`` (default) it starts a new session
    (``setsid``): code inside cannot signal our process group with
    ``kill(0, sig)``, and our terminal's Ctrl-C does not reach it; pass
    ``False`` for an interactive program that needs our terminal.

    ``sandbox`` is a full isolation spec (:class:`~aiospaces.Sandbox`): its
    namespaces are added to ``flags``, its id maps replace ``uid_map``/
    ``gid_map``/``map_zero`` (give those in the Sandbox), its environment is
    used when ``env`` is None, and ``cwd`` applies after the Sandbox's own.

    Returns once the program runs (its ``execve`` succeeded).

    Cancellation: cancelling ``create_process()`` at any point kills the
    child (its whole namespace, with an init), waits until it is reaped,
    closes every fd it opened, and re-raises ``CancelledError``.

    >>> proc = await create_process(["id", "-u"], CLONE_NEWUSER, stdout=PIPE,
    ...                             map_zero=True)  # doctest: +SKIP
    >>> await proc.communicate()  # doctest: +SKIP
    (b'0\\n', None)
    """
    flags = validate_flags(flags)
    raw_argv, shown = _check_argv(argv)
    envb = _check_env(env)
    cwdb = _check_path(cwd, "cwd")
    specs = (
        _check_stdio(stdin, "stdin"),
        _check_stdio(stdout, "stdout"),
        _check_stdio(stderr, "stderr"),
    )
    fds = check_pass_fds(pass_fds)
    check_bool(as_pid_1, "as_pid_1")
    close = check_bool(close_fds, "close_fds")
    die = check_bool(die_with_parent, "die_with_parent")
    session = check_bool(new_session, "new_session")
    compiled: CompiledSandbox | None = None
    if sandbox is None:
        maps = check_maps(flags, uid_map, gid_map, map_zero)
    else:
        if not isinstance(sandbox, Sandbox):
            raise TypeError(f"sandbox must be a Sandbox, not {type(sandbox).__name__}")
        check_bool(map_zero, "map_zero")
        if uid_map not in (None, "", False) or gid_map not in (None, "", False) or map_zero:
            raise ValueError("with sandbox=, put uid_map/gid_map/map_zero in the Sandbox")
        # Last of the checks: it may open fds (enter targets), closed below.
        compiled = sandbox.compile(flags)
        flags, maps = compiled.flags, compiled.maps
        if env is None and compiled.env is not None:
            envb = _check_env(compiled.env)
    if as_pid_1 and not flags & C.CLONE_NEWPID:
        if compiled is not None:
            compiled.close()
        raise ValueError("as_pid_1=True needs a new pid namespace: add CLONE_NEWPID to flags")
    try:
        return await _start(
            raw_argv, shown, flags, envb, cwdb, specs, fds, close, die, maps, as_pid_1, compiled,
            session,
        )  # fmt: skip
    finally:
        if compiled is not None:
            compiled.close()


async def _start(
    raw_argv: tuple[bytes, ...],
    shown: list[str | bytes],
    flags: int,
    envb: dict[bytes, bytes],
    cwdb: bytes | None,
    specs: tuple[_Norm, _Norm, _Norm],
    fds: tuple[int, ...],
    close: bool,
    die: bool,
    maps: MapPlan | None,
    as_pid_1: bool,
    compiled: CompiledSandbox | None,
    session: bool,
) -> Process:
    candidates = _candidates(raw_argv[0], envb)
    child_steps = compiled.child_steps if compiled else ()
    init_rlimits: tuple[tuple[int, int, int], ...] = ()
    if compiled is not None and flags & C.CLONE_NEWPID and not as_pid_1:
        # With an init, the Sandbox's rlimits are the program's, not the
        # init's (which is a copy of this interpreter): the init applies them.
        init_rlimits = tuple(
            (s.resource, s.soft, s.hard) for s in child_steps if isinstance(s, Rlimit)
        )
        child_steps = tuple(s for s in child_steps if not isinstance(s, Rlimit))
    program = os.fsdecode(raw_argv[0])
    with_init = bool(flags & C.CLONE_NEWPID) and not as_pid_1

    io_ = _open_stdio(specs)
    try:
        plan = ChildPlan(
            die_with_parent=die,
            close_fds=close,
            pass_fds=tuple(sorted({*fds, *io_.sources, *(compiled.pass_fds if compiled else ())})),
            new_pidns=bool(flags & C.CLONE_NEWPID),
            steps=child_steps,
            new_session=session,
        )
        exec_plan = _ExecPlan(
            candidates,
            raw_argv,
            envb,
            cwdb,
            tuple(io_.dups),
            tuple(dict.fromkeys(io_.sources)),
            io_.stderr_to_stdout,
            program,
        )
        body: Callable[[int], int]
        if with_init:
            body = _init_body(
                _init.InitPlan(
                    candidates, raw_argv, envb, cwdb, _file_actions(io_), program, init_rlimits
                )
            )
        else:
            body = _exec_body(exec_plan)
        try:
            if _fastexec.enabled(flags) and not plan.steps and compiled is None:
                # The C path (aiospaces._fastexec): no interpreter copy.
                core = await _fastexec.launch_exec(
                    flags,
                    _fastexec.FastPlan(exec_plan, plan.pass_fds, close, die, with_init, session),
                    maps=maps,
                    started_on="R" if with_init else "EOF",
                )
            else:
                core = await launch(
                    flags,
                    plan,
                    body,
                    maps=maps,
                    parent_steps=compiled.parent_steps if compiled else (),
                    started_on="R" if with_init else "EOF",
                    cgroup_fd=compiled.cgroup_fd if compiled else -1,
                )
        finally:
            io_.close_sources()
        guard = compiled.supervise(core) if compiled is not None else None
        proc = Process(core, flags, shown, with_init, guard)
        try:
            await _connect_uncancelled(proc, io_.parent_ends)
        except BaseException:
            await proc._abort()
            raise
    except BaseException:
        io_.close_all()
        raise
    return proc


async def run(
    argv: Sequence[StrOrBytesPath],
    flags: int = 0,
    *,
    input: bytes | None = None,
    capture_output: bool = False,
    stdin: StdioSpec = None,
    stdout: StdioSpec = None,
    stderr: StdioSpec = None,
    timeout: float | None = None,  # noqa: ASYNC109 - subprocess.run's signature
    check: bool = False,
    max_output: int | None = None,
    **kwargs: Any,
) -> CompletedRun:
    """Run ``argv`` in new namespaces to completion, like :func:`subprocess.run`.

    ``capture_output=True`` is ``stdout=PIPE, stderr=PIPE``; ``input`` is
    fed to stdin (which is then a ``PIPE``). ``timeout`` (seconds, from the
    start) kills the whole sandbox, reaps it, and raises :class:`RunTimeout`
    (a :class:`TimeoutError` and a :class:`subprocess.TimeoutExpired`)
    carrying the output captured so far. ``max_output`` bounds the bytes
    kept per captured stream: the rest is read and dropped, and the result's
    ``stdout_truncated``/``stderr_truncated`` say so. ``check=True`` raises
    :class:`subprocess.CalledProcessError` for a non-zero returncode. Other
    keyword arguments go to :func:`create_process`.

    Cancellation: cancelling ``run()`` kills the sandbox and waits until it
    is reaped before ``CancelledError`` propagates.

    >>> done = await run(["hostname"], CLONE_NEWUSER | CLONE_NEWUTS, map_zero=True,
    ...                  capture_output=True, check=True)  # doctest: +SKIP
    >>> done.stdout  # doctest: +SKIP
    b'myhost\\n'
    """
    check_bool(capture_output, "capture_output")
    check_bool(check, "check")
    if capture_output:
        if stdout is not None or stderr is not None:
            raise ValueError("stdout and stderr may not be used with capture_output")
        stdout = stderr = PIPE
    if input is not None:
        if stdin is not None:
            raise ValueError("stdin and input may not both be used")
        if not isinstance(input, (bytes, bytearray, memoryview)):
            raise TypeError(f"input must be bytes, not {type(input).__name__}")
        stdin = PIPE
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise TypeError(f"timeout must be a number of seconds, not {type(timeout).__name__}")
        if not timeout >= 0:
            raise ValueError(f"timeout must be >= 0, not {timeout}")
    if max_output is not None:
        if isinstance(max_output, bool) or not isinstance(max_output, int):
            raise TypeError(f"max_output must be an int, not {type(max_output).__name__}")
        if max_output < 0:
            raise ValueError(f"max_output must be >= 0, not {max_output}")
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    cap = _Capture(max_output)
    proc: Process | None = None
    scope = asyncio.timeout_at(deadline)
    try:
        async with scope:
            proc = await create_process(
                argv, flags, stdin=stdin, stdout=stdout, stderr=stderr, **kwargs
            )
            await proc._communicate(bytes(input) if input is not None else None, cap)
    except TimeoutError:
        if not scope.expired():
            raise
        # Killed and reaped by create_process/_communicate on their way out.
        out, err = proc._outputs(cap) if proc is not None else (None, None)
        raise RunTimeout(_shown(argv), float(timeout or 0), out, err) from None
    assert proc is not None
    out, err = proc._outputs(cap)
    rc = proc.returncode
    assert rc is not None
    if proc.timed_out:  # the Sandbox's own timeout, not run()'s
        guard = proc._guard
        assert guard is not None and guard.timeout is not None
        raise RunTimeout(_shown(argv), float(guard.timeout), out, err)
    if check and rc:
        raise subprocess.CalledProcessError(rc, proc.args, out, err)
    return CompletedRun(
        proc.args,
        rc,
        out,
        err,
        stdout_truncated=cap.truncated[0],
        stderr_truncated=cap.truncated[1],
    )


def _shown(argv: Sequence[StrOrBytesPath]) -> list[str | bytes]:
    return [os.fspath(a) for a in argv]
