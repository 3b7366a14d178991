"""Feature probes and the hints that turn a kernel refusal into advice.

Probes run once and are cached (as CPython's ``can_use_pidfd()``).
"""

from __future__ import annotations

import errno
import functools
import os

from . import constants as C

_state = {"clone3": True}


def has_clone3() -> bool:
    """False once clone3 answered ENOSYS (kernel < 5.3 or a seccomp profile)."""
    return _state["clone3"]


def _mark_no_clone3() -> None:
    _state["clone3"] = False


def read_setting(path: str) -> str | None:
    """A small /proc or /sys file, stripped; None if it cannot be read."""
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


@functools.cache
def kernel_release() -> str:
    return os.uname().release


def userns_hint() -> str:
    """Why user namespaces may be refused on this host, and the fix."""
    hints = []
    if read_setting("/proc/sys/kernel/unprivileged_userns_clone") == "0":
        hints.append(
            "kernel.unprivileged_userns_clone is 0: `sysctl -w kernel.unprivileged_userns_clone=1`"
        )
    if read_setting("/proc/sys/user/max_user_namespaces") == "0":
        hints.append("user.max_user_namespaces is 0: `sysctl -w user.max_user_namespaces=15000`")
    if read_setting("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") == "1":
        hints.append(
            "AppArmor restricts unprivileged user namespaces: "
            "`sysctl -w kernel.apparmor_restrict_unprivileged_userns=0` or an AppArmor profile "
            "with `userns,` for this interpreter"
        )
    if not hints:
        hints.append(
            "user namespaces are refused: check the sysctls kernel.unprivileged_userns_clone and "
            "user.max_user_namespaces, or the container's seccomp profile "
            "(docker: --security-opt seccomp=unconfined)"
        )
    return "; ".join(hints)


def diagnose_clone_error(err: int, flags: int) -> tuple[str, bool]:
    """Return ``(hint, refused_by_policy)`` for a failed clone with ``flags``.

    ``refused_by_policy`` is true when the cause is the host's configuration
    (not a transient shortage), so the caller raises NamespaceUnavailable.
    """
    ns = flags & C.ALL_NAMESPACES
    if err == errno.ENOSYS:
        return (
            f"clone3 and pidfds need Linux >= 5.3 (this is {kernel_release()}); inside a "
            "container, the seccomp profile may hide clone3: update the runtime",
            True,
        )
    if err == errno.EPERM and flags & C.CLONE_NEWUSER:
        return userns_hint(), True
    if err == errno.EPERM and ns:
        return (
            "creating namespaces other than a user namespace needs CAP_SYS_ADMIN: add "
            "CLONE_NEWUSER (with map_zero=True) to run unprivileged",
            True,
        )
    if err == errno.ENOSPC and ns:
        return (
            "a namespace limit is reached (/proc/sys/user/max_*_namespaces) "
            "or the pid namespace nesting is too deep",
            True,
        )
    if err == errno.EINVAL and flags & C.CLONE_NEWTIME:
        return "time namespaces need Linux >= 5.6", True
    if err == errno.EINVAL and flags & C.CLONE_NEWUSER and flags & C.CLONE_NEWPID:
        return "this kernel refuses these namespace flags together", True
    if err == errno.EAGAIN:
        return "the process limit is reached (RLIMIT_NPROC, pids cgroup or kernel.pid_max)", False
    if err == errno.ENOMEM:
        return "out of memory, or the pid namespace's init has exited", False
    return "", False
