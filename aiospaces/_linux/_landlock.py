"""Landlock (Linux 5.13+): unprivileged filesystem access control.

``abi()`` probes the kernel once (0: no landlock). :class:`Ruleset` is
prepared in the parent (the structures, the access masks) and
:meth:`Ruleset.apply` runs in the child: open each path ``O_PATH``, add a
path-beneath rule, ``landlock_restrict_self``.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import stat
from typing import Final

from ._syscalls import _check, _syscall

SYS_landlock_create_ruleset: Final = 444  # the same number on every architecture
SYS_landlock_add_rule: Final = 445
SYS_landlock_restrict_self: Final = 446
_CREATE_RULESET_VERSION: Final = 1
_RULE_PATH_BENEATH: Final = 1

EXECUTE: Final = 1 << 0
WRITE_FILE: Final = 1 << 1
READ_FILE: Final = 1 << 2
READ_DIR: Final = 1 << 3
REMOVE_DIR: Final = 1 << 4
REMOVE_FILE: Final = 1 << 5
MAKE_CHAR: Final = 1 << 6
MAKE_DIR: Final = 1 << 7
MAKE_REG: Final = 1 << 8
MAKE_SOCK: Final = 1 << 9
MAKE_FIFO: Final = 1 << 10
MAKE_BLOCK: Final = 1 << 11
MAKE_SYM: Final = 1 << 12
REFER: Final = 1 << 13  # ABI 2 (5.19)
TRUNCATE: Final = 1 << 14  # ABI 3 (6.2)
IOCTL_DEV: Final = 1 << 15  # ABI 5 (6.10)

FILE_ACCESS: Final = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV
"""The rights that make sense on a file (a rule on a file with others is EINVAL)."""
READ_ACCESS: Final = EXECUTE | READ_FILE | READ_DIR


def fs_access_for_abi(abi_version: int) -> int:
    """Every filesystem right ABI ``abi_version`` knows (what a ruleset handles)."""
    mask = (1 << 13) - 1
    if abi_version >= 2:
        mask |= REFER
    if abi_version >= 3:
        mask |= TRUNCATE
    if abi_version >= 5:
        mask |= IOCTL_DEV
    return mask


@functools.cache
def abi() -> int:
    """The kernel's Landlock ABI version, or 0 when Landlock is absent or disabled."""
    ret = int(
        _syscall(
            ctypes.c_long(SYS_landlock_create_ruleset),
            None,
            ctypes.c_size_t(0),
            ctypes.c_uint32(_CREATE_RULESET_VERSION),
        )
    )
    return max(ret, 0)


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class Ruleset:
    """A prepared Landlock ruleset: ``rules`` are ``(path, access mask)`` pairs.

    ``handled`` is what the ruleset restricts; anything handled and not
    granted by a rule (for a path or one of its parents) is denied.
    """

    __slots__ = ("_attr", "_rules", "handled")

    def __init__(self, handled: int, rules: tuple[tuple[str, int], ...]) -> None:
        self.handled = handled
        self._attr = _RulesetAttr(handled)
        self._rules = tuple(
            (os.fsencode(path), path, access & handled, _PathBeneath(access & handled, -1))
            for path, access in rules
        )

    def apply(self) -> None:
        """In the child: create, fill and enforce the ruleset on this thread.

        Needs no_new_privs or CAP_SYS_ADMIN (in the current user namespace).
        ``OSError`` names the rule's path when a path cannot be opened.
        """
        rfd = _check(
            _syscall,
            ctypes.c_long(SYS_landlock_create_ruleset),
            ctypes.c_void_p(ctypes.addressof(self._attr)),
            ctypes.c_size_t(ctypes.sizeof(self._attr)),
            ctypes.c_uint32(0),
        )
        try:
            for raw, path, access, attr in self._rules:
                try:
                    fd = os.open(raw, os.O_PATH | os.O_CLOEXEC)
                except OSError as exc:
                    raise OSError(exc.errno, exc.strerror, path) from None
                try:
                    if not stat.S_ISDIR(os.fstat(fd).st_mode):
                        attr.allowed_access = access & FILE_ACCESS
                    attr.parent_fd = fd
                    _check(
                        _syscall,
                        ctypes.c_long(SYS_landlock_add_rule),
                        ctypes.c_int(rfd),
                        ctypes.c_int(_RULE_PATH_BENEATH),
                        ctypes.c_void_p(ctypes.addressof(attr)),
                        ctypes.c_uint32(0),
                        filename=path,
                    )
                finally:
                    os.close(fd)
            _check(
                _syscall,
                ctypes.c_long(SYS_landlock_restrict_self),
                ctypes.c_int(rfd),
                ctypes.c_uint32(0),
            )
        finally:
            os.close(rfd)


def unavailable_reason() -> str:
    """Why :func:`abi` is 0 on this host (for error messages)."""
    ret = int(
        _syscall(
            ctypes.c_long(SYS_landlock_create_ruleset),
            None,
            ctypes.c_size_t(0),
            ctypes.c_uint32(_CREATE_RULESET_VERSION),
        )
    )
    if ret >= 0:
        return f"Landlock ABI {ret} is available"
    err = ctypes.get_errno()
    if err == errno.ENOSYS:
        release = os.uname().release
        return f"this kernel ({release}) has no Landlock (Linux >= 5.13 with it built in)"
    if err == errno.EOPNOTSUPP:
        return "Landlock is disabled at boot: add 'landlock' to the lsm= kernel parameter"
    return f"Landlock probe failed: {os.strerror(err)}"
