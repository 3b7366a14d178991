"""Exec mode without copying the interpreter: ``clone3(CLONE_VM)`` in C.

The fork path (:func:`aiospaces._launch.launch`) clones the whole Python
parent: its page tables are copied, and then both sides take hundreds of
copy-on-write faults, before a few dozen bytecodes call ``execve``. When the
child runs no Python at all — exec mode with no child-side setup steps, the
common case — :func:`launch_exec` instead calls ``_fork.spawn_exec``, whose
child shares the parent's memory and runs a few hundred instructions of C
on a stack of its own, making raw system calls only.

The region. ``spawn_exec`` copies everything the child needs — the ``PATH``
candidates, argv, envp, cwd, the stdio plan, the fds to keep, the ``E``
records' JSON (split around the errno value, filled in by the child) — into
one anonymous mapping that also holds two 64 KiB stacks. The child never
reads a Python object. The parent unmaps the region (``release_region``)
only once the child is reaped: with an init, PID 1 runs on it for as long
as the sandbox lives.

The protocol (the same frames and the same "go" byte as the fork path, so
:class:`~aiospaces._launch.Launched` and :class:`~aiospaces._process.Process`
read it unchanged)::

    parent (Python)                          child (C, CLONE_VM, own stack)
    socketpair; both ends lifted to fd >= 3
    block every signal in this thread
    clone3(CLONE_VM|CLONE_PIDFD|ns flags,    starts with every signal blocked
           exit_signal=SIGCHLD)
    restore the thread's mask
    close the child's end                    PDEATHSIG=SIGKILL; close the parent's end
    write uid_map/gid_map ─── go ─────────▶  read "go" (EOF: _exit(124))
                                             caught signals → SIG_DFL (the parent's
                                             handlers must never run here);
                                             dup2 the stdio plan, close the sources,
                                             close_range around the kept fds, chdir
                                             (failure: E, step "stdio"/"chdir", 125)

    no init (no CLONE_NEWPID, or as_pid_1=True):
    started on R then EOF    ◀── R           SIGPIPE/SIGXFSZ default, mask empty,
                                             execve each candidate (the channel is
                                             close-on-exec: success is EOF)
                             ◀── E           every candidate failed (step "execve")

    init (CLONE_NEWPID, as_pid_1=False): the child is PID 1
                                             clone3(CLONE_VM|CLONE_VFORK) → the program,
                                             which calls PTRACE_TRACEME, resets the
                                             forwarded signals and execs; the init
                                             resumes once execve has replaced its
                                             memory, waits for the SIGTRAP stop that
                                             ends a traced execve, and detaches
                                             (suppressing the SIGTRAP)
    started on R             ◀── R           (or E, step "execve": exec failed)
                                             close every fd but the channel; loop on
                                             rt_sigtimedwait(forwarded + SIGCHLD):
    terminate() ── SIGTERM ─▶ init ─kill─▶   program; wait4(-1, WNOHANG) reaps orphans
                                             program gone: kill(-1, SIGKILL), reap all
    returncode               ◀── S           the program's returncode; _exit(rc or 128+N)

Why the ptrace step: the vfork return comes before the kernel has loaded
the new image (the program's ``/proc/PID/cmdline`` is still empty), and
``R`` promises a running program. It costs about 0.1 ms; where ptrace is
refused (Yama scope 3, an LSM) the init sends ``R`` at the vfork return.
The tracer is the init, which holds every capability in the program's user
namespace, so a traced execve loses no privilege. ``wait_exec = False``
turns it off (for measuring).

The init keeps every signal blocked and takes the forwarded ones with
``rt_sigtimedwait``: the kernel queues a blocked signal even for a
namespace's PID 1 (which drops a signal whose action is the default), so no
handler is needed and none of the parent's code can ever run in it.
Semantics match :mod:`aiospaces._init`: the program is PID 2, gets
SIGTERM/SIGINT/SIGHUP/SIGQUIT/SIGUSR1/SIGUSR2 forwarded, and its end ends
the sandbox.

Eligible spawns (no child-side Python steps, no ``CLONE_NEWTIME``) use
this path by default (:func:`enabled`); set
``AIOSPACES_EXEC_PATH=fork`` to force the fork path. Hosts without the C
extension, without clone3 (Linux < 5.3) or on other architectures than
x86_64 and aarch64 use the fork path.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import json
import os
import socket
from dataclasses import dataclass

from ._launch import Launched, StartedOn, _flush_stdio
from ._linux import constants as C
from ._linux import has_clone3
from ._linux.clone import _clone_error
from .idmap import MapPlan, write_maps, write_maps_async

try:
    from ._linux import _fork
except ImportError:  # pragma: no cover - the extension is optional
    _fork = None  # type: ignore[assignment]

__all__ = ["ExecPlan", "FastPlan", "enabled", "launch_exec"]

ENV_VAR = "AIOSPACES_EXEC_PATH"

# spawn_exec's option bits (SX_* in _forkmodule.c).
DIE_WITH_PARENT = 1
WITH_INIT = 2
CLOSE_FDS = 4
STDERR_TO_STDOUT = 8
WAIT_EXEC = 16
NEW_SESSION = 32

# The init sends R once the program's execve has completed (ptrace handshake).
wait_exec = True

_ERRNO_MARK = "@@ERRNO@@"


def available() -> bool:
    """The C path exists here: the extension has it and the kernel has clone3."""
    return _fork is not None and hasattr(_fork, "spawn_exec") and has_clone3()


def enabled(flags: int = 0) -> bool:
    """Exec-mode spawns with ``flags`` take the C path (``AIOSPACES_EXEC_PATH``
    unset or anything but ``fork``).

    Not with ``CLONE_NEWTIME``: a child that shares its parent's memory
    stays in the parent's time namespace (the kernel moves only a fresh mm
    into ``time_for_children``), so the program would silently run without
    it.
    """
    if flags & C.CLONE_NEWTIME:
        return False
    return os.environ.get(ENV_VAR, "") != "fork" and available()


@dataclass(frozen=True, slots=True)
class ExecPlan:
    """What to exec and how to wire it (shared with the fork path's exec body)."""

    candidates: tuple[bytes, ...]  # paths to try, in PATH order
    argv: tuple[bytes, ...]
    env: dict[bytes, bytes]
    cwd: bytes | None
    dups: tuple[tuple[int, int], ...]  # (source, stdio fd)
    sources: tuple[int, ...]  # fds to close after the dups
    stderr_to_stdout: bool
    program: str  # for the error record's filename


@dataclass(frozen=True, slots=True)
class FastPlan:
    """Everything ``spawn_exec`` copies into its region."""

    exec: ExecPlan
    pass_fds: tuple[int, ...]
    close_fds: bool
    die_with_parent: bool
    with_init: bool
    new_session: bool = True


@functools.lru_cache(maxsize=256)  # the same few programs, run again and again
def _template(step: str, filename: str | None) -> tuple[bytes, bytes]:
    """An ``E`` record split around its errno (``msg`` is empty: the parent
    fills in ``strerror``)."""
    rec = {"type": "OSError", "errno": 0, "msg": "", "step": step, "filename": filename}
    text = json.dumps(rec).replace('"errno": 0', f'"errno": {_ERRNO_MARK}', 1)
    pre, _, suf = text.partition(_ERRNO_MARK)
    return pre.encode(), suf.encode()


def _high(fd: int) -> int:
    """``fd`` moved to 3 or above (close-on-exec), so the stdio plan cannot hit it."""
    if fd >= 3:
        return fd
    try:
        return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    finally:
        os.close(fd)


def _release(addr: int, size: int) -> None:
    assert _fork is not None
    with contextlib.suppress(OSError):
        _fork.release_region(addr, size)


async def launch_exec(
    flags: int,
    plan: FastPlan,
    *,
    maps: MapPlan | None = None,
    started_on: StartedOn = "EOF",
) -> Launched:
    """:func:`aiospaces._launch.launch` for exec mode, through ``spawn_exec``.

    Same contract: on any failure or cancellation the child is killed and
    reaped and every fd closed before the exception propagates. The
    returned :class:`Launched` has ``fastexec = True``.
    """
    assert _fork is not None
    loop = asyncio.get_running_loop()
    parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    psock, csock = parent_sock.detach(), child_sock.detach()
    try:
        psock = _high(psock)
        csock = _high(csock)
        child = Launched(loop, psock, started_on)
    except BaseException:
        for fd in (psock, csock):
            with contextlib.suppress(OSError):
                os.close(fd)
        raise
    child.fastexec = True  # type: ignore[attr-defined]
    ex = plan.exec
    opts = (
        (DIE_WITH_PARENT if plan.die_with_parent else 0)
        | (WITH_INIT if plan.with_init else 0)
        | (CLOSE_FDS if plan.close_fds else 0)
        | (STDERR_TO_STDOUT if ex.stderr_to_stdout else 0)
        | (WAIT_EXEC if wait_exec else 0)
        | (NEW_SESSION if plan.new_session else 0)
    )
    srcs = set(ex.sources)
    keep = sorted({csock, *(fd for fd in plan.pass_fds if fd >= 3 and fd not in srcs)})
    cwd_name = os.fsdecode(ex.cwd) if ex.cwd is not None else None
    errs = (
        _template("execve", ex.program),
        _template("chdir", cwd_name),
        _template("stdio", None),
    )
    dups: list[int] = []
    for src, dst in ex.dups:
        dups += (src, dst)
    envp = [k + b"=" + v for k, v in ex.env.items()]
    _flush_stdio()  # the program's output must not overtake ours
    try:
        pid, pidfd, addr, size = _fork.spawn_exec(
            flags,
            opts,
            csock,
            psock,
            ex.candidates,
            ex.argv,
            envp,
            ex.cwd,
            dups,
            sorted(srcs),
            keep,
            [fd for fd in plan.pass_fds if fd >= 3],
            errs,
        )
    except BaseException as exc:
        child.channel.close()
        os.close(csock)
        if isinstance(exc, OSError):
            raise _clone_error(exc, flags, "clone3") from exc
        raise
    child.attach(pid, pidfd)
    child.done.add_done_callback(lambda _: _release(addr, size))
    os.close(csock)
    try:
        if maps is not None:
            if maps.use_helpers:
                await write_maps_async(pid, maps)
            else:
                write_maps(pid, maps)
        child.go()
        await child.started
    except BaseException:
        await child.kill_and_reap()
        raise
    return child
