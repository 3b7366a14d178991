"""Syscall-level probes for ``aiospaces check`` that need ctypes.

Each one asks the kernel directly and never changes the calling process.
"""

from __future__ import annotations

import ctypes
import errno
import os
from typing import Final

SYS_landlock_create_ruleset: Final = 444  # the same number on every architecture (5.13)
LANDLOCK_CREATE_RULESET_VERSION: Final = 1 << 0

_libc: Final = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


def landlock_abi() -> int:
    """The Landlock ABI version the kernel offers (1 on Linux 5.13, 4 on 6.7, ...).

    Raises ``OSError``: ``ENOSYS`` when the kernel has no Landlock (< 5.13 or
    built without it), ``EOPNOTSUPP`` when it is built in but not enabled at
    boot (absent from the ``lsm=`` list).
    """
    ret = _syscall(
        ctypes.c_long(SYS_landlock_create_ruleset),
        ctypes.c_void_p(None),
        ctypes.c_size_t(0),
        ctypes.c_uint32(LANDLOCK_CREATE_RULESET_VERSION),
    )
    if ret < 0:
        err = ctypes.get_errno() or errno.ENOSYS
        raise OSError(err, os.strerror(err))
    return int(ret)
