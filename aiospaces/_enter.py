"""Entering the namespaces of a running process (``nsenter``, pyspaces' ``Inject``).

The child joins the target's namespaces with one ``setns(pidfd, flags)``
call (Linux 5.8): atomic — all or none — and race-free (the pidfd pins the
target; a recycled pid cannot be joined by mistake).

Joining a **pid** namespace changes only where the caller's *children* go
(``/proc/self/ns/pid_for_children``); the caller itself stays where it was.
The parent cannot do the setns for its next clone (it would have to hold
``CAP_SYS_ADMIN`` in its own user namespace, and may not move), so the child
forks once more after the setns:

* the grandchild lives in the target's pid namespace: it runs the rest of
  the setup steps and the user's ``fn``/``execve``, and owns the channel to
  the parent (frames, errors, result);
* the first child becomes a relay: it closes every other fd, forwards
  SIGTERM/SIGINT/SIGHUP/SIGQUIT/SIGUSR1/SIGUSR2 to the grandchild through a
  pidfd, waits for it, and ends the same way (same exit status, or killed
  by the same signal), so ``Child.returncode`` means what it always means.
  SIGKILL of the relay kills the grandchild too (``PR_SET_PDEATHSIG``, with
  a pipe to close the window before the prctl).

``Child.pid`` and ``Child.pidfd`` are the relay's. New namespaces asked for
together with ``enter`` are made by ``unshare`` after the setns, so they
belong to the joined user namespace (an unprivileged caller could not make
them otherwise).
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import select
import signal
from dataclasses import dataclass
from typing import Final, Protocol, TypeAlias, runtime_checkable

from ._child import PID1_EXIT_SIGNALS
from ._linux import clone_child, set_pdeathsig, setns, unshare
from ._linux import constants as C

__all__ = ["EnterTarget", "HasPidfd"]

NS_ORDER: Final = ("user", "cgroup", "ipc", "uts", "net", "pid", "mnt", "time")
"""nsenter's order (user first: it grants the capabilities for the rest)."""
NS_FLAG: Final = {
    "user": C.CLONE_NEWUSER,
    "cgroup": C.CLONE_NEWCGROUP,
    "ipc": C.CLONE_NEWIPC,
    "uts": C.CLONE_NEWUTS,
    "net": C.CLONE_NEWNET,
    "pid": C.CLONE_NEWPID,
    "mnt": C.CLONE_NEWNS,
    "time": C.CLONE_NEWTIME,
}


@runtime_checkable
class HasPidfd(Protocol):
    """Anything with ``pid`` and ``pidfd``: :class:`~aiospaces.Child`, ``Process``."""

    @property
    def pid(self) -> int: ...

    @property
    def pidfd(self) -> int: ...


EnterTarget: TypeAlias = HasPidfd | int
"""What ``Sandbox(enter=...)`` accepts: a handle with a pidfd, or a pid."""


def _exited(pidfd: int) -> bool:
    # A pidfd polls readable once its process has exited (zombie included).
    p = select.poll()
    p.register(pidfd, select.POLLIN)
    return bool(p.poll(0))


def open_target(target: EnterTarget) -> tuple[int, int]:
    """``(pid, pidfd)`` of a live target; the pidfd is a new fd the caller closes.

    Raises ``ProcessLookupError`` when the target has exited or was reaped.
    """
    if isinstance(target, bool):
        raise TypeError("enter must be a Child, a Process or a pid, not bool")
    if isinstance(target, int):
        if target <= 0:
            raise ValueError(f"enter: {target} is not a pid")
        pid = target
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            raise ProcessLookupError(
                errno.ESRCH, f"enter: there is no process {pid} to enter"
            ) from None
    else:
        pid = int(target.pid)
        src = int(target.pidfd)
        if src < 0:
            raise ProcessLookupError(
                errno.ESRCH, f"enter: the target process {pid} has exited and was reaped"
            )
        fd = os.dup(src)
    if _exited(fd):
        os.close(fd)
        raise ProcessLookupError(errno.ESRCH, f"enter: the target process {pid} has exited")
    return pid, fd


def ns_inode(pid: int | str, ns: str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/{ns}").st_ino
    except OSError:
        return None


def differing(pid: int, names: tuple[str, ...]) -> tuple[str, ...]:
    """Those of ``names`` in which ``pid`` is not where we are (joining the
    user namespace one is already in is an error: EINVAL)."""
    out = []
    for ns in names:
        theirs = ns_inode(pid, ns)
        if theirs is None:
            # No such namespace file: unsupported here, or the target died.
            raise ProcessLookupError(
                errno.ESRCH, f"enter: cannot read /proc/{pid}/ns/{ns} (has the target exited?)"
            )
        if theirs != ns_inode("self", ns):
            out.append(ns)
    return tuple(out)


# --- child-side steps ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SetNs:
    """``setns(pidfd, flags)``, then close the pidfd."""

    pidfd: int
    flags: int
    name: str

    def run(self) -> None:
        try:
            setns(self.pidfd, self.flags)
        except ProcessLookupError:
            raise OSError(errno.ESRCH, "the target process has exited") from None
        finally:
            os.close(self.pidfd)


@dataclass(frozen=True, slots=True)
class Unshare:
    """New namespaces, made after the setns (owned by the joined user namespace)."""

    flags: int
    name: str

    def run(self) -> None:
        unshare(self.flags)


_RELAYED: Final = (*PID1_EXIT_SIGNALS, int(signal.SIGINT))


@dataclass(frozen=True, slots=True)
class ForkIntoPidns:
    """Fork so the rest of the setup runs in the joined pid namespace (see module doc)."""

    name: str = "fork into the pid namespace"

    def run(self) -> None:
        r, w = os.pipe2(os.O_CLOEXEC)
        pid, pidfd = clone_child(0)
        if pid == 0:
            # The grandchild: the real child from here on.
            os.close(w)
            set_pdeathsig(signal.SIGKILL)
            if select.select([r], [], [], 0)[0]:
                os._exit(124)  # EOF: the relay died before the prctl
            os.close(r)
            return
        relay(pidfd, keep=(w,))


def relay(pidfd: int, keep: tuple[int, ...] = ()) -> None:
    """Become the relay for the grandchild behind ``pidfd``; never returns."""
    try:
        keep_fds = sorted({pidfd, *keep})
        lo = 0
        for fd in keep_fds:
            os.closerange(lo, fd)
            lo = fd + 1
        os.closerange(lo, 1 << 30)

        def forward(signum: int, frame: object) -> None:
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(pidfd, signum)

        for sig in _RELAYED:
            signal.signal(sig, forward)
        while True:
            try:
                res = os.waitid(os.P_PIDFD, pidfd, os.WEXITED)
            except InterruptedError:  # pragma: no cover - PEP 475
                continue
            break
        if res is None:  # pragma: no cover - WNOHANG not used
            os._exit(1)
        if res.si_code == os.CLD_EXITED:
            os._exit(res.si_status)
        sig = res.si_status
        # Die the same way, without a core file of the relay.
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        for s in _RELAYED:
            signal.signal(s, signal.SIG_DFL)
        if sig not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(sig, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])
        os.kill(os.getpid(), sig)
        os._exit(128 + sig)
    finally:
        os._exit(1)
