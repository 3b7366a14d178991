"""The exceptions aiospaces raises.

Every error that leaves the library is one of these or a builtin
(``ValueError``/``TypeError`` for bad arguments, ``OSError`` subclasses such
as ``FileNotFoundError`` for a failed ``execve``, ``TimeoutError``)::

    Exception
    ├── OSError
    │   └── SpawnError                  a setup step failed before the child ran
    │       └── NamespaceUnavailable    the kernel or a policy refuses a namespace/pidfd
    ├── ChildProcessError
    │   └── ChildLost                   someone else reaped our child (waitpid(-1) elsewhere)
    └── ChildFailed                     fn gave no value: base of the three below
        ├── ChildError                  fn raised, or its value/exception could not travel
        ├── ChildKilled                 the child died by a signal
        └── ChildExited                 the child exited without sending a result

Lower-layer ``OSError`` values are turned into these at one boundary
(``aiospaces._spawn`` / ``aiospaces.cloning``), always ``raise ... from exc``.
"""

from __future__ import annotations

import errno as _errno
import os
import signal as _signal

__all__ = [
    "ChildError",
    "ChildExited",
    "ChildFailed",
    "ChildKilled",
    "ChildLost",
    "NamespaceUnavailable",
    "SpawnError",
]


class SpawnError(OSError):
    """A step of creating or setting up the child failed before it ran.

    ``errno`` and ``strerror`` are the kernel's; ``step`` names what failed
    (``"clone3"``, ``"uid_map"``, ``"setgroups"``, ``"child setup"``...), and
    ``hint``, when known, says how to make the step work on this host.

    >>> e = SpawnError(1, "Operation not permitted", step="uid_map")
    >>> e.step, e.errno
    ('uid_map', 1)
    """

    step: str
    hint: str | None

    def __init__(
        self,
        errno: int,
        strerror: str | None = None,
        filename: str | None = None,
        *,
        step: str,
        hint: str | None = None,
    ) -> None:
        if strerror is None:
            strerror = os.strerror(errno) if errno else "failed"
        if filename is None:
            super().__init__(errno, strerror)
        else:
            super().__init__(errno, strerror, filename)
        self.step = step
        self.hint = hint

    def __str__(self) -> str:
        text = f"{self.step}: {super().__str__()}"
        if self.hint:
            text += f" ({self.hint})"
        return text

    def __reduce__(self) -> tuple[object, ...]:
        return (
            _rebuild_spawn_error,
            (type(self), self.errno, self.strerror, self.filename, self.step, self.hint),
        )


def _rebuild_spawn_error(
    cls: type[SpawnError],
    errno: int,
    strerror: str | None,
    filename: str | None,
    step: str,
    hint: str | None,
) -> SpawnError:
    return cls(errno, strerror, filename, step=step, hint=hint)


class NamespaceUnavailable(SpawnError):
    """The kernel, a sysctl, a security module or a seccomp profile refuses
    what was asked (user namespaces, clone3, pidfds). ``hint`` names the fix."""


class ChildLost(ChildProcessError):
    """The child was reaped by someone else (another ``waitpid(-1)`` or
    ``os.wait()`` in this process), so its exit status is gone.

    aiospaces never reaps children it did not create; code that reaps *any*
    child steals ours. ``Child.returncode`` stays ``None``.
    """

    def __init__(self, pid: int) -> None:
        super().__init__(
            _errno.ECHILD,
            f"child {pid} was reaped by someone else (a waitpid(-1)/os.wait() elsewhere "
            "in this process); its exit status is lost",
        )
        self.pid = pid


class ChildFailed(Exception):
    """The child produced no value: base class of ChildError/ChildKilled/ChildExited."""

    returncode: int | None = None


class ChildError(ChildFailed):
    """``fn`` raised an exception that could not be sent back or rebuilt, or the
    value it returned could not be pickled/unpickled, or the child sent data
    that does not follow the protocol. The message says which; the child's
    formatted traceback, when there is one, is in ``remote_traceback``."""

    def __init__(self, message: str, remote_traceback: str | None = None) -> None:
        super().__init__(message)
        self.remote_traceback = remote_traceback


class ChildKilled(ChildFailed):
    """The child died by a signal before sending a result.

    ``signal`` is the signal number, ``returncode`` its negative.
    ``reason`` is ``"signal"`` unless more is known (later releases add
    ``"oom"``, ``"cpu-limit"``, ``"timeout"``).
    """

    def __init__(self, returncode: int, reason: str = "signal") -> None:
        self.returncode = returncode
        self.signal = -returncode
        self.reason = reason
        try:
            name = _signal.Signals(self.signal).name
        except ValueError:
            name = str(self.signal)
        super().__init__(f"child killed by {name} (returncode {returncode}, reason: {reason})")


class ChildExited(ChildFailed):
    """The child exited (``returncode``) without sending a result: ``fn``
    called ``os._exit``/``sys.exit`` or the child was ended before it ran."""

    def __init__(self, returncode: int) -> None:
        self.returncode = returncode
        super().__init__(f"child exited with status {returncode} without a result")
