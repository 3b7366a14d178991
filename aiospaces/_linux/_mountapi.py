"""Bindings for the sandbox's child-side steps: mount, pivot_root, setattr, ioctl.

These run in a freshly cloned child, between clone and ``fn``/``execve``,
so they take *prepared* arguments: paths as ``bytes`` and structs already
packed by the parent. Function pointers get their argtypes once at import
time; a call builds no ctypes objects (each object written in the child is
a copy-on-write page fault). Errors are ``OSError(errno, strerror,
filename)`` where ``filename`` is the path as the caller named it (the
sandbox's view, not the staging path the child really used).
"""

from __future__ import annotations

import ctypes
import struct
from typing import Final

from . import constants as C
from ._syscalls import _bind, _check, _libc

SYS_mount_setattr: Final = 442  # same number on every architecture (5.12)
AT_FDCWD: Final = -100
AT_RECURSIVE: Final = 0x8000
AT_NO_AUTOMOUNT: Final = 0x800
MOUNT_ATTR_RDONLY: Final = 0x00000001
MOUNT_ATTR_NOSUID: Final = 0x00000002
MOUNT_ATTR_NODEV: Final = 0x00000004
MOUNT_ATTR_NOEXEC: Final = 0x00000008

_mount_fn = _bind(
    _libc,
    "mount",
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_char_p,
)
_umount2_fn = _bind(_libc, "umount2", ctypes.c_char_p, ctypes.c_int)
# syscall(2) is variadic: one typed prototype per use, so a call in the
# child passes plain ints and bytes and builds no ctypes objects.
_pivot_root_fn = ctypes.CFUNCTYPE(
    ctypes.c_long, ctypes.c_long, ctypes.c_char_p, ctypes.c_char_p, use_errno=True
)(("syscall", _libc))
_mount_setattr_fn = ctypes.CFUNCTYPE(
    ctypes.c_long,
    ctypes.c_long,
    ctypes.c_int,
    ctypes.c_char_p,
    ctypes.c_uint,
    ctypes.c_char_p,
    ctypes.c_size_t,
    use_errno=True,
)(("syscall", _libc))


def mount(
    source: bytes | None,
    target: bytes,
    fstype: bytes | None,
    flags: int,
    data: bytes | None,
    filename: str,
) -> None:
    """``mount(2)`` with prepared bytes; the error names ``filename``."""
    _check(_mount_fn, source, target, fstype, flags, data, filename=filename)


def umount2(target: bytes, flags: int, filename: str) -> None:
    """``umount2(2)``."""
    _check(_umount2_fn, target, flags, filename=filename)


def pivot_root(new_root: bytes, put_old: bytes, filename: str) -> None:
    """``pivot_root(2)`` (no glibc wrapper)."""
    _check(_pivot_root_fn, C.SYS_pivot_root, new_root, put_old, filename=filename)


def mount_attr(attr_set: int = 0, attr_clr: int = 0) -> bytes:
    """Pack a ``struct mount_attr`` (parent side; the child passes the bytes)."""
    return struct.pack("=QQQQ", attr_set, attr_clr, 0, 0)


MOUNT_ATTR_SIZE: Final = len(mount_attr())


def mount_setattr(path: bytes, flags: int, attr: bytes, filename: str) -> None:
    """``mount_setattr(2)`` (Linux 5.12): change only the given attributes.

    Unlike a ``MS_REMOUNT|MS_BIND`` remount it keeps the flags a user
    namespace may not clear (nosuid, nodev, atime), and with
    ``AT_RECURSIVE`` it reaches every mount below ``path`` in one call.
    """
    _check(
        _mount_setattr_fn,
        SYS_mount_setattr,
        AT_FDCWD,
        path,
        flags,
        attr,
        len(attr),
        filename=filename,
    )


# --- network ioctls (struct ifreq / struct rtentry, packed by the parent) -------

SIOCGIFFLAGS: Final = 0x8913
SIOCSIFFLAGS: Final = 0x8914
SIOCSIFADDR: Final = 0x8916
SIOCSIFNETMASK: Final = 0x891C
SIOCADDRT: Final = 0x890B
IFF_UP: Final = 0x1
IFF_RUNNING: Final = 0x40
RTF_UP: Final = 0x1
RTF_GATEWAY: Final = 0x2
IFNAMSIZ: Final = 16


def ifreq_flags(ifname: str, flags: int) -> bytes:
    """``struct ifreq`` with ``ifr_flags`` (40 bytes: name + the union)."""
    return struct.pack("16sh22x", ifname.encode(), flags)


def ifreq_addr(ifname: str, packed_ipv4: bytes) -> bytes:
    """``struct ifreq`` with an ``AF_INET`` ``sockaddr_in`` in ``ifr_addr``."""
    return struct.pack("16sH2s4s8x8x", ifname.encode(), 2, b"\0\0", packed_ipv4)


def _sockaddr_in(packed_ipv4: bytes) -> bytes:
    return struct.pack("H2s4s8x", 2, b"\0\0", packed_ipv4)


def rtentry_default_via(gateway_ipv4: bytes) -> bytes:
    """``struct rtentry`` for ``default via GATEWAY`` (``SIOCADDRT``)."""
    zero = _sockaddr_in(b"\0\0\0\0")
    raw = struct.pack(
        "@L16s16s16sHhLPhPLLH",
        0,
        zero,  # rt_dst 0.0.0.0
        _sockaddr_in(gateway_ipv4),
        zero,  # rt_genmask 0.0.0.0
        RTF_UP | RTF_GATEWAY,
        0,
        0,
        0,
        0,
        0,  # rt_dev NULL: any interface that reaches the gateway
        0,
        0,
        0,
    )
    # struct's "@" aligns members but adds no trailing padding (120 on LP64).
    align = struct.calcsize("@L")
    return raw + b"\0" * (-len(raw) % align)
