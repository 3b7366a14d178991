"""ctypes bindings: the only module of aiospaces that calls into libc.

Every wrapper is small and typed, never returns -1, and raises
``OSError(errno, strerror[, filename])`` on failure. EINTR is retried in
:func:`_check` (the one place that does it) for the calls that may see it.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import time
from typing import Any, Final

from . import constants as C

# CDLL drops the GIL around each call; PyDLL keeps it held, which clone3
# needs: the interpreter must not run another thread between PyOS_BeforeFork
# and the syscall (os.fork() holds the GIL the same way).
try:
    from . import _fork as _cfork
except ImportError:  # built without a C compiler: the ctypes path below
    _cfork = None  # type: ignore[assignment]

HAVE_C_FORK: Final = _cfork is not None
"""True when clone3 runs through the compiled helper (the safe path)."""

_libc: Final = ctypes.CDLL(None, use_errno=True)
_libc_gil: Final = ctypes.PyDLL(None, use_errno=True)
_pyapi: Final = ctypes.pythonapi

_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_syscall_gil = _libc_gil.syscall
_syscall_gil.restype = ctypes.c_long

for _name in ("PyOS_BeforeFork", "PyOS_AfterFork_Parent", "PyOS_AfterFork_Child"):
    getattr(_pyapi, _name).argtypes = []
    getattr(_pyapi, _name).restype = None


def _raise(err: int, filename: str | None = None) -> None:
    if filename is None:
        raise OSError(err, os.strerror(err))
    raise OSError(err, os.strerror(err), filename)


def _check(fn: object, *args: object, filename: str | None = None) -> int:
    """Call a ctypes function, retrying EINTR; raise OSError on -1."""
    call = fn  # typed loosely: ctypes function pointers are not generic
    while True:
        ret = int(call(*args))  # type: ignore[operator]
        if ret != -1:
            return ret
        err = ctypes.get_errno()
        if err != errno.EINTR:
            _raise(err, filename)


class CloneArgs(ctypes.Structure):
    """``struct clone_args`` (VER2, 88 bytes: up to ``cgroup``, Linux 5.7)."""

    _fields_ = [
        ("flags", ctypes.c_uint64),
        ("pidfd", ctypes.c_uint64),
        ("child_tid", ctypes.c_uint64),
        ("parent_tid", ctypes.c_uint64),
        ("exit_signal", ctypes.c_uint64),
        ("stack", ctypes.c_uint64),
        ("stack_size", ctypes.c_uint64),
        ("tls", ctypes.c_uint64),
        ("set_tid", ctypes.c_uint64),
        ("set_tid_size", ctypes.c_uint64),
        ("cgroup", ctypes.c_uint64),
    ]


_CLONE_ARGS_SIZE_VER0: Final = 64  # without set_tid/set_tid_size/cgroup (5.3)
_CLONE_ARGS_SIZE_VER2: Final = ctypes.sizeof(CloneArgs)


def clone3(flags: int, *, exit_signal: int = C.SIGCHLD, cgroup_fd: int = -1) -> tuple[int, int]:
    """Create a child like ``fork()`` would, with ``flags`` and a pidfd.

    Returns ``(pid, pidfd)`` in the parent and ``(0, -1)`` in the child.
    ``os.register_at_fork`` hooks run exactly as for ``os.fork()``; the
    pidfd is close-on-exec. Needs Linux 5.3 (5.7 for ``cgroup_fd``).
    Raises ``OSError`` with the kernel's errno (ENOSYS: no clone3).
    """
    if _cfork is not None:
        return _cfork.clone3(flags, exit_signal, cgroup_fd)
    return _clone3_ctypes(flags, exit_signal, cgroup_fd)


def _clone3_ctypes(flags: int, exit_signal: int, cgroup_fd: int) -> tuple[int, int]:
    # Fallback when the C helper was not built. Between the syscall and
    # PyOS_AfterFork_Child a few bytecodes run in the child; if another
    # thread had asked for the GIL (a drop request) before the clone, the
    # child would wait for it forever. Yielding the GIL first resets the
    # request: the window is then the few microseconds up to the syscall.
    _yield_gil()
    pidfd = ctypes.c_int(-1)
    args = CloneArgs()
    args.flags = flags | C.CLONE_PIDFD
    args.pidfd = ctypes.addressof(pidfd)
    args.exit_signal = exit_signal
    size = _CLONE_ARGS_SIZE_VER0
    if cgroup_fd >= 0:
        args.flags |= C.CLONE_INTO_CGROUP
        args.cgroup = cgroup_fd
        size = _CLONE_ARGS_SIZE_VER2
    _pyapi.PyOS_BeforeFork()
    pid = int(_syscall_gil(ctypes.c_long(C.SYS_clone3), ctypes.byref(args), ctypes.c_size_t(size)))
    if pid == 0:
        _pyapi.PyOS_AfterFork_Child()
        return 0, -1
    err = ctypes.get_errno()
    _pyapi.PyOS_AfterFork_Parent()
    if pid < 0:
        _raise(err)
    return pid, pidfd.value


def clone_legacy(flags: int, *, exit_signal: int = C.SIGCHLD) -> tuple[int, int]:
    """The pre-5.3 path: raw ``clone`` with ``CLONE_PIDFD`` (5.2).

    Same contract as :func:`clone3`. Cannot express ``CLONE_NEWTIME`` or the
    64-bit flags; callers check that first.
    """
    if _cfork is not None:
        return _cfork.clone_legacy(flags, exit_signal)
    _yield_gil()
    pidfd = ctypes.c_int(-1)
    word = (flags & 0xFFFFFF00) | C.CLONE_PIDFD | (exit_signal & C.CSIGNAL)
    ptid = ctypes.addressof(pidfd)
    _pyapi.PyOS_BeforeFork()
    # x86_64: clone(flags, newsp, parent_tid, child_tid, tls); aarch64 swaps the
    # last two. With child_tid and tls both 0 the order does not matter.
    pid = int(
        _syscall_gil(
            ctypes.c_long(C.SYS_clone),
            ctypes.c_ulong(word),
            ctypes.c_void_p(0),
            ctypes.c_void_p(ptid),
            ctypes.c_void_p(0),
            ctypes.c_void_p(0),
        )
    )
    if pid == 0:
        _pyapi.PyOS_AfterFork_Child()
        return 0, -1
    err = ctypes.get_errno()
    _pyapi.PyOS_AfterFork_Parent()
    if pid < 0:
        _raise(err)
    return pid, pidfd.value


def _yield_gil() -> None:
    if len(os.listdir("/proc/self/task")) > 1:
        time.sleep(0)


def pidfd_open(pid: int) -> int:
    """A close-on-exec pidfd for ``pid`` (Linux 5.3)."""
    return os.pidfd_open(pid)


def pidfd_send_signal(pidfd: int, sig: int) -> None:
    """Signal the process behind ``pidfd``: no pid-reuse race.

    Raises ``ProcessLookupError`` once the process has exited.
    """
    signal.pidfd_send_signal(pidfd, sig)


def waitid_pidfd(pidfd: int, *, block: bool = False) -> int | None:
    """Reap the child behind ``pidfd``.

    Returns its returncode (negative signal number if killed), or ``None``
    when ``block`` is false and it is still running. Raises
    ``ChildProcessError`` when it is not (or no longer) our child.
    """
    options = os.WEXITED if block else os.WEXITED | os.WNOHANG
    while True:
        try:
            res = os.waitid(os.P_PIDFD, pidfd, options)
        except InterruptedError:  # pragma: no cover - PEP 475 retries already
            continue
        break
    if res is None or res.si_pid == 0:
        return None
    if res.si_code == os.CLD_EXITED:
        return int(res.si_status)
    return -int(res.si_status)


def _bind(lib: ctypes.CDLL, name: str, *argtypes: type) -> Any:
    # argtypes set once: calls then take plain ints, and no ctypes objects are
    # built per call (in a fresh child every object written is a page copied).
    fn = getattr(lib, name)
    fn.argtypes = list(argtypes)
    fn.restype = ctypes.c_int
    return fn


_unshare = _bind(_libc, "unshare", ctypes.c_int)
_setns = _bind(_libc, "setns", ctypes.c_int, ctypes.c_int)
_UL = ctypes.c_ulong
_prctl = _bind(_libc_gil, "prctl", ctypes.c_int, _UL, _UL, _UL, _UL)


def unshare(flags: int) -> None:
    """``unshare(2)``."""
    _check(_unshare, flags)


def setns(fd: int, nstype: int = 0) -> None:
    """``setns(2)``: ``fd`` is a namespace file or (5.8+) a pidfd."""
    _check(_setns, fd, nstype)


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    """``prctl(2)`` (never blocks, so it keeps the GIL: cheaper in a fresh child)."""
    return _check(_prctl, option, arg2, arg3, arg4, arg5)


def set_pdeathsig(sig: int) -> None:
    """Have the kernel send ``sig`` when the creating thread exits.

    Called first thing in every fresh child: kept to one ctypes call.
    """
    if _prctl(C.PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
        _raise(ctypes.get_errno())


def mount(
    source: str | None,
    target: str,
    fstype: str | None = None,
    flags: int = 0,
    data: str | None = None,
) -> None:
    """``mount(2)``; the error names ``target``."""
    _check(
        _libc.mount,
        None if source is None else os.fsencode(source),
        os.fsencode(target),
        None if fstype is None else os.fsencode(fstype),
        ctypes.c_ulong(flags),
        None if data is None else os.fsencode(data),
        filename=target,
    )


def umount2(target: str, flags: int = 0) -> None:
    """``umount2(2)``."""
    _check(_libc.umount2, os.fsencode(target), ctypes.c_int(flags), filename=target)


def pivot_root(new_root: str, put_old: str) -> None:
    """``pivot_root(2)`` (no glibc wrapper exists)."""
    _check(
        _syscall,
        ctypes.c_long(C.SYS_pivot_root),
        os.fsencode(new_root),
        os.fsencode(put_old),
        filename=new_root,
    )


def sethostname(name: str) -> None:
    """``sethostname(2)``."""
    raw = name.encode()
    _check(_libc.sethostname, raw, ctypes.c_size_t(len(raw)))


def setdomainname(name: str) -> None:
    """``setdomainname(2)``."""
    raw = name.encode()
    _check(_libc.setdomainname, raw, ctypes.c_size_t(len(raw)))
