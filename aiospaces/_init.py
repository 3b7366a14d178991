"""The init of exec mode's pid namespaces: PID 1 when the program is not.

With ``CLONE_NEWPID`` and ``as_pid_1=False`` the cloned child becomes a small
init — the same interpreter, forked by clone3, not a new one — and starts
the program with ``posix_spawn`` (a vfork-style clone in glibc: no page
tables are copied and the init learns of a failed ``execve`` synchronously).

Why an init at all: a namespace's PID 1 receives from its ancestors only the
signals it has a handler for, and orphans are reparented to it. A program
that is PID 1 by accident (a shell, ``sleep``) ignores ``SIGTERM`` and leaves
zombies; the init forwards the signals and reaps.

The protocol, on the child's frame channel (see :mod:`aiospaces._frames`)::

    parent                                   init (PID 1, after child_main's setup)
    ── go ──▶                                chdir(cwd); block the forwarded signals;
                                             install forwarding handlers
                                             posix_spawn(candidate, ...) for each
                                             PATH candidate, until one execs
    started (create_process returns) ◀── R   the program runs: record its pid,
                                             close every fd but the channel,
                                             unblock (pending signals forward now)
             or setup error          ◀── E   (step "execve": every candidate
                                             failed; exit 125)
    terminate() → SIGTERM ─▶ init ─kill(2)─▶ program
                                             waitpid(-1): reap orphans; when the
                                             program ends: kill(-1, SIGKILL),
                                             reap the rest (ECHILD)
    returncode = S's value   ◀── S           the program's returncode (-N: signal N)
    pidfd readable → reaped                  _exit(status, or 128+N)

``S`` is needed because PID 1 cannot die of a signal whose action is the
default: the init's own exit status can say "143" but not "killed by
SIGTERM". The parent prefers ``S`` to the init's status; if the init itself
was killed (``Process.kill()``, a timeout) there is no ``S`` and the
returncode is the init's, ``-9``. The init writes ``R`` only after
``posix_spawn`` returned, i.e. after the program's ``execve`` succeeded, so
the parent needs no EOF to know exec worked (the init keeps the channel open
for ``S``). The program never holds the channel: it is close-on-exec, and
the init closes every other fd once the program runs, so a pipe's EOF in the
parent depends on the program and its descendants only.

Everything here runs in the child, prepared by the parent: the plan holds
bytes, tuples and ints only, and the code touches as few objects as it can
(every page written is a copy-on-write fault).
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # the C module: no enum wrapping
import contextlib
import os
import resource
import struct
from dataclasses import dataclass

from . import _frames

try:
    from ._linux import _fork as _cfork
except ImportError:  # built without a C compiler
    _cfork = None  # type: ignore[assignment]

__all__ = ["FORWARDED_SIGNALS", "InitPlan", "decode_status", "run_init"]

FORWARDED_SIGNALS: tuple[int, ...] = tuple(
    int(getattr(_signal, name))
    for name in ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2")
)
STATUS = struct.Struct("!i")
_SIG_BLOCK = int(_signal.SIG_BLOCK)
_SIG_SETMASK = int(_signal.SIG_SETMASK)
_SIGKILL = int(_signal.SIGKILL)
_SIG_DFL = int(_signal.SIG_DFL)
# Kept by glibc's posix_spawn for the program unless named: Python ignores
# SIGPIPE and SIGXFSZ; subprocess restores them to the default too.
DEFAULT_FOR_PROGRAM: tuple[int, ...] = tuple(
    int(getattr(_signal, name)) for name in ("SIGPIPE", "SIGXFSZ") if hasattr(_signal, name)
)
EXIT_SETUP_FAILED = 125


@dataclass(frozen=True, slots=True)
class InitPlan:
    """What the init does, prepared by the parent."""

    candidates: tuple[bytes, ...]  # paths to try, in PATH order
    argv: tuple[bytes, ...]
    env: dict[bytes, bytes]
    cwd: bytes | None
    file_actions: tuple[tuple[int, ...], ...]  # os.posix_spawn's, stdio wiring
    program: str  # for the error record's filename
    # (resource, soft, hard): a Sandbox's rlimits, for the program only. The
    # init is a copy of the parent interpreter: RLIMIT_AS below its size would
    # make its own posix_spawn fail (ENOMEM), so they are set in a forked
    # child right before execve (see _fork_exec).
    rlimits: tuple[tuple[int, int, int], ...] = ()


def _fork_exec(plan: InitPlan) -> int:
    """Start the program in a forked child that sets ``plan.rlimits`` last.

    As ``posix_spawn`` would (stdio actions, default signals, empty mask),
    with a close-on-exec pipe reporting the errno of a failed execve.
    """
    r, w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # the program-to-be: never returns
        err = 1
        try:
            os.close(r)
            for act in plan.file_actions:
                if act[0] == os.POSIX_SPAWN_DUP2:
                    os.dup2(act[1], act[2])
                elif act[0] == os.POSIX_SPAWN_CLOSE:
                    with contextlib.suppress(OSError):
                        os.close(act[1])
            for sig in FORWARDED_SIGNALS + DEFAULT_FOR_PROGRAM:
                _signal.signal(sig, _SIG_DFL)
            _signal.pthread_sigmask(_SIG_SETMASK, ())
            envp = [k + b"=" + v for k, v in plan.env.items()]
            if _cfork is not None:
                err = _cfork.execve_limited(plan.candidates, plan.argv, envp, plan.rlimits)
            else:  # no C helper: Python allocates after the limits are set
                for res, soft, hard in plan.rlimits:
                    resource.setrlimit(res, (soft, hard))
                for path in plan.candidates:
                    with contextlib.suppress(OSError):
                        os.execve(path, plan.argv, plan.env)
                err = 2
            os.write(w, STATUS.pack(err))
        finally:
            os._exit(EXIT_SETUP_FAILED)
    os.close(w)
    try:
        data = os.read(r, STATUS.size)
    finally:
        os.close(r)
    if data:
        os.waitpid(pid, 0)
        (err,) = STATUS.unpack(data)
        raise OSError(err, os.strerror(err))
    return pid


def decode_status(payload: bytes) -> int | None:
    """The returncode in an ``S`` frame, or ``None`` if malformed."""
    if len(payload) != STATUS.size:
        return None
    return int(STATUS.unpack(payload)[0])


# The program's pid, read by the forwarding handler (a list: one slot,
# written once before the signals are unblocked).
_PROGRAM = [0]


def _forward(signum: int, frame: object) -> None:
    pid = _PROGRAM[0]
    if pid > 0:
        with contextlib.suppress(OSError):
            os.kill(pid, signum)


def _report(sock: int, exc: OSError, step: str, filename: str) -> int:
    rec = OSError(exc.errno or 0, exc.strerror or str(exc), filename)
    _frames.write_all(sock, _frames.encode(b"E", _frames.setup_record(rec, step)))
    return EXIT_SETUP_FAILED


def run_init(sock: int, plan: InitPlan) -> int:
    """The init's body (the child's ``body(sock)``): returns its exit status."""
    os.set_inheritable(sock, False)
    if plan.cwd is not None:
        try:
            os.chdir(plan.cwd)
        except OSError as exc:
            return _report(sock, exc, "chdir", os.fsdecode(plan.cwd))
    # Held until _PROGRAM is set: a signal meanwhile stays pending.
    _signal.pthread_sigmask(_SIG_BLOCK, FORWARDED_SIGNALS)
    for sig in FORWARDED_SIGNALS:
        _signal.signal(sig, _forward)
    pid = 0
    saved: OSError | None = None
    last: OSError | None = None
    if plan.rlimits:
        try:
            pid = _fork_exec(plan)
        except OSError as exc:
            return _report(sock, exc, "execve", plan.program)
    for path in plan.candidates if not pid else ():
        try:
            # A failed posix_spawn costs a pid: look before leaping, so the
            # program is PID 2 whatever the PATH (stat fails as execve would).
            os.stat(path)
            pid = os.posix_spawn(
                path,
                plan.argv,
                plan.env,
                file_actions=plan.file_actions,
                setsigdef=FORWARDED_SIGNALS + DEFAULT_FOR_PROGRAM,
                setsigmask=(),
            )
            break
        except OSError as exc:
            # As _posixsubprocess: the first error that is not "not here".
            last = exc
            if saved is None and exc.errno not in (2, 20):  # ENOENT, ENOTDIR
                saved = exc
    if not pid:
        err = saved or last or OSError(2, "No such file or directory")
        return _report(sock, err, "execve", plan.program)
    _PROGRAM[0] = pid
    # The init needs nothing but the channel now: the stdio pipe ends and,
    # with close_fds=False, the parent's close-on-exec fds would otherwise
    # keep pipes open for as long as the sandbox lives.
    os.closerange(0, sock)
    os.closerange(sock + 1, 1 << 30)
    _frames.write_all(sock, _frames.RUNNING)
    _signal.pthread_sigmask(_SIG_SETMASK, ())
    status = -1
    while True:
        try:
            child, wstatus = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        if child == pid:
            status = wstatus
            _PROGRAM[0] = 0
            # The program is done: so is the sandbox. PID 1's kill(-1)
            # reaches every other process of the namespace.
            with contextlib.suppress(OSError):
                os.kill(-1, _SIGKILL)
    rc = os.waitstatus_to_exitcode(status) if status != -1 else 255
    with contextlib.suppress(OSError):
        _frames.write_all(sock, _frames.encode(b"S", STATUS.pack(rc)))
    return 128 - rc if rc < 0 else rc
