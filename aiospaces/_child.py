"""The child side: the only code that runs between clone and ``fn``/``execve``.

It does no fresh work: the parent prepared the plan. It waits for the
parent's "go", applies the setup steps in order, reports a failure as an
``E`` frame naming the step, and leaves with ``os._exit`` on any path — it
never returns into the parent's code (the caller's stack is a copy of the
parent's, and unwinding it would run the parent's ``finally`` blocks twice).
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # the C module under signal
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn, Protocol

from . import _frames
from ._linux import constants as C
from ._linux import set_pdeathsig

_SIG_DFL = int(signal.SIG_DFL)
_SIG_SETMASK = int(signal.SIG_SETMASK)
_SIG_BLOCK = int(signal.SIG_BLOCK)
_SIGINT = int(signal.SIGINT)
_SIGKILL = int(signal.SIGKILL)

# Exit statuses of a child that never reached fn/execve.
EXIT_PARENT_GONE = 124  # EOF instead of "go": the parent died or gave up
EXIT_SETUP_FAILED = 125  # a setup step failed (the E frame says which)

# Signals a PID-1 child gets handlers for, so terminate() & co. still end
# it: the kernel drops signals whose action is SIG_DFL for a namespace's init.
PID1_EXIT_SIGNALS = tuple(
    int(s) for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
)


class Step(Protocol):
    """One child-side setup step (a Sandbox compiles to a tuple of these)."""

    @property
    def name(self) -> str: ...

    def run(self) -> None: ...


@dataclass(frozen=True, slots=True)
class ChildPlan:
    """What the child does before its body runs, prepared by the parent."""

    die_with_parent: bool = True
    close_fds: bool = True
    pass_fds: tuple[int, ...] = ()
    new_pidns: bool = False
    steps: tuple[Step, ...] = ()
    # fn mode: PID 1 ends with 128+N on the signals above (see spawn()).
    pid1_handlers: bool = False
    # setsid(): the child leaves the parent's session and process group, so
    # kill(0, sig) inside cannot reach the parent's group (the kernel lets a
    # process in a child pid/user namespace signal its own process group, and
    # our uid owns the parent), and the parent's terminal's Ctrl-C does not
    # reach the child.
    new_session: bool = True


def _exit_on_signal(signum: int, frame: object) -> None:
    _flush_stdio()
    os._exit(128 + signum)


@dataclass(frozen=True, slots=True)
class SignalPlan:
    """What the child must undo of the parent's signal state, found before clone.

    Computed in the parent so the child touches as little memory as it can:
    every page the child writes after clone is a copy-on-write fault.
    """

    reset: tuple[int, ...]  # signals with Python handlers → SIG_DFL
    unblock: bool  # the spawning thread blocks some signals
    pid1: tuple[int, ...]  # SIG_DFL signals that get the PID-1 exit handler


_ALL_SIGNALS = tuple(
    int(s) for s in signal.valid_signals() if s not in (signal.SIGKILL, signal.SIGSTOP)
)


def signal_plan(pid1_handlers: bool) -> SignalPlan:
    """The parent's side of :func:`_reset_signals` (call right before clone)."""
    # The parent's loop may route signals to handlers that only poke its
    # wakeup fd; in the child nothing reads it and the signal would vanish.
    # So Python-level handlers are the parent's business: the child starts
    # from the defaults (SIGINT keeps KeyboardInterrupt, ignored signals stay
    # ignored, as across fork+exec).
    reset = []
    dfl = []
    getsignal = _signal.getsignal  # no enum wrapping: this runs on every spawn
    default_int = _signal.default_int_handler
    for sig in _ALL_SIGNALS:
        handler = getsignal(sig)
        if callable(handler) and handler is not default_int:
            reset.append(sig)
            dfl.append(sig)
        elif handler == _SIG_DFL:
            dfl.append(sig)
    pid1 = tuple(s for s in PID1_EXIT_SIGNALS if s in dfl) if pid1_handlers else ()
    unblock = bool(reset or pid1 or _signal.pthread_sigmask(_SIG_BLOCK, ()))
    return SignalPlan(tuple(reset), unblock, pid1)


def hold_signals(plan: SignalPlan) -> set[int | signal.Signals] | None:
    """Block, in the parent's thread and around the clone only, the signals
    the child will re-handle; return the mask to restore (parent only).

    The child starts with them blocked, so one sent before it set its
    handlers stays pending instead of being swallowed by the parent's handler
    or dropped by the kernel (PID 1 without a handler); the child unblocks
    them once its handlers are in place. Not a context manager on purpose:
    the child leaves the clone call too, and must not restore the mask.
    """
    sigs = plan.reset + plan.pid1
    if not sigs:
        return None
    old: set[int | signal.Signals] = _signal.pthread_sigmask(_SIG_BLOCK, sigs)
    return old


def release_signals(old: set[int | signal.Signals] | None) -> None:
    if old is not None:
        _signal.pthread_sigmask(_SIG_SETMASK, old)


def _reset_signals(plan: SignalPlan) -> None:
    # The C module directly: signal.signal()/pthread_sigmask() wrap their
    # results in enums, and that machinery alone costs the fresh child ~100
    # copy-on-write page faults (about 0.5 ms here).
    _signal.set_wakeup_fd(-1)
    for sig in plan.reset:
        _signal.signal(sig, _SIG_DFL if sig != _SIGINT else _signal.default_int_handler)
    for sig in plan.pid1:
        _signal.signal(sig, _exit_on_signal)
    if plan.unblock:  # last: a signal held since the clone now finds its handler
        _signal.pthread_sigmask(_SIG_SETMASK, ())


def _close_fds(keep: set[int]) -> None:
    # closerange uses close_range(2) where the kernel has it (5.9).
    lo = 3
    for fd in sorted(keep):
        if fd >= lo:
            os.closerange(lo, fd)
            lo = fd + 1
    os.closerange(lo, 1 << 30)
    for fd in keep:
        if fd > 2:
            os.set_inheritable(fd, True)


def _flush_stdio() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except Exception:  # the child is leaving: nothing to report to
            pass


def _parent_gone(sock: int) -> bool:
    """Did the parent die before PDEATHSIG was set (after sending "go")?

    Then its end of the channel is closed: a non-blocking read sees EOF.
    Alive, the parent has sent nothing more, so the read would block.
    """
    os.set_blocking(sock, False)
    try:
        return os.read(sock, 1) == b""
    except BlockingIOError:
        return False
    finally:
        os.set_blocking(sock, True)


def escape_guard(sock: int) -> NoReturn:
    """The child raised between clone and :func:`child_main`: report, exit."""
    exc = sys.exc_info()[1] or RuntimeError("unknown failure after clone")
    report_failure(sock, exc, "after clone")


def report_failure(sock: int, exc: BaseException, step: str) -> NoReturn:
    """Send an ``E`` frame for a failed setup step and exit."""
    try:
        _frames.write_all(sock, _frames.encode(b"E", _frames.setup_record(exc, step)))
    finally:
        os._exit(EXIT_SETUP_FAILED)


def child_main(
    sock: int,
    parent_end: int,
    plan: ChildPlan,
    sigplan: SignalPlan,
    body: Callable[[int], int],
    *,
    pdeathsig_set: bool = False,
) -> NoReturn:
    """Entry point right after clone returned 0 in the child. Never returns.

    ``body(sock)`` runs the user's work and returns the exit status; it is
    responsible for its own frames. Every path ends in ``os._exit``.
    ``pdeathsig_set``: the clone's caller already set PDEATHSIG (the
    spawner does it in C, right after the clone).
    """
    code = EXIT_SETUP_FAILED
    try:
        step = "pdeathsig"
        try:
            if plan.die_with_parent and not pdeathsig_set:
                set_pdeathsig(_SIGKILL)
            if parent_end >= 0:
                os.close(parent_end)
            step = "handshake"
            go = b""
            while not go:
                try:
                    go = os.read(sock, 1)
                except InterruptedError:  # pragma: no cover - PEP 475
                    continue
                if not go:
                    # EOF: the parent died (or aborted) before saying go.
                    os._exit(EXIT_PARENT_GONE)
            if go != _frames.GO:
                raise RuntimeError(f"handshake: expected the go byte, got {go!r}")
            if plan.die_with_parent and _parent_gone(sock):
                os._exit(EXIT_PARENT_GONE)
            if plan.new_session:
                step = "setsid"
                os.setsid()
            step = "signals"
            _reset_signals(sigplan)
            if plan.close_fds:
                step = "close_fds"
                _close_fds({sock, *plan.pass_fds})
            for s in plan.steps:
                step = s.name
                s.run()
        except BaseException as exc:
            report_failure(sock, exc, step)
        code = body(sock)
    except BaseException:  # pragma: no cover - body handles its own errors
        code = 1
    finally:
        _flush_stdio()
        os._exit(code)


def new_pidns(flags: int) -> bool:
    return bool(flags & C.CLONE_NEWPID)
