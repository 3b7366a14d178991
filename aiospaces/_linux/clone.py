"""Flag validation and the one clone entry point (clone3, else clone)."""

from __future__ import annotations

import errno
import operator

from .._errors import NamespaceUnavailable, SpawnError
from . import _syscalls
from . import constants as C
from .probe import _mark_no_clone3, diagnose_clone_error, has_clone3

_ALLOWED = C.ALL_NAMESPACES | C.HARMLESS_FLAGS


def validate_flags(flags: object, *, field: str = "flags") -> int:
    """Check clone flags from the caller; return them as an int.

    Raises ``TypeError`` for a non-integer and ``ValueError`` for a flag that
    would corrupt the interpreter or the parent, saying why.

    >>> validate_flags(C.CLONE_NEWUSER | C.CLONE_NEWPID) == C.CLONE_NEWUSER | C.CLONE_NEWPID
    True
    """
    if isinstance(flags, bool) or not isinstance(flags, int):
        try:
            flags = operator.index(flags)  # type: ignore[arg-type]
        except TypeError:
            raise TypeError(
                f"{field} must be an int of CLONE_* flags, not {type(flags).__name__}"
            ) from None
    if flags < 0:
        raise ValueError(f"{field} must not be negative")
    if flags & C.CSIGNAL & ~C.CLONE_NEWTIME:
        raise ValueError(
            f"{field} has bits in the exit-signal byte (0x{flags & C.CSIGNAL:02x}): aiospaces "
            "always uses SIGCHLD; pass namespace flags only"
        )
    for bit, why in C.FORBIDDEN_FLAGS.items():
        if flags & bit:
            raise ValueError(f"{field}: {_name(bit)} is refused for a Python child: it {why}")
    unknown = flags & ~_ALLOWED
    if unknown:
        raise ValueError(f"{field} has unknown clone flags 0x{unknown:x}")
    return int(flags)


def _name(bit: int) -> str:
    for name in dir(C):
        if name.startswith("CLONE_") and getattr(C, name) == bit:
            return name
    return hex(bit)  # pragma: no cover


def clone_child(flags: int, *, cgroup_fd: int = -1) -> tuple[int, int]:
    """Create the child: ``(pid, pidfd)`` in the parent, ``(0, -1)`` in it.

    Tries clone3 first (5.3); on ENOSYS falls back to clone with
    ``CLONE_PIDFD`` (5.2) for the rest of the process' life, unless the
    flags need clone3 (time namespace, cgroup fd). Kernel refusals become
    :class:`SpawnError` (or :class:`NamespaceUnavailable` when the host's
    policy is the cause) with step ``"clone3"``/``"clone"`` and a hint.
    """
    if has_clone3():
        try:
            return _syscalls.clone3(flags, cgroup_fd=cgroup_fd)
        except OSError as exc:
            if exc.errno != errno.ENOSYS:
                raise _clone_error(exc, flags, "clone3") from exc
            _mark_no_clone3()
    if flags & C.CLONE_NEWTIME or cgroup_fd >= 0:
        hint, _ = diagnose_clone_error(errno.ENOSYS, flags)
        raise NamespaceUnavailable(
            errno.ENOSYS,
            "clone3 is unavailable and the legacy clone cannot create a time namespace "
            "or start a child in a cgroup",
            step="clone3",
            hint=hint,
        )
    try:
        return _syscalls.clone_legacy(flags)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            # CLONE_PIDFD itself is unknown: Linux < 5.2.
            raise NamespaceUnavailable(
                exc.errno,
                exc.strerror,
                step="clone",
                hint=diagnose_clone_error(errno.ENOSYS, flags)[0],
            ) from exc
        raise _clone_error(exc, flags, "clone") from exc


def _clone_error(exc: OSError, flags: int, step: str) -> SpawnError:
    err = exc.errno or 0
    hint, policy = diagnose_clone_error(err, flags)
    cls = NamespaceUnavailable if policy else SpawnError
    return cls(err, exc.strerror, step=step, hint=hint or None)
