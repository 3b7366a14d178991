"""Capabilities and no_new_privs: ``capget``/``capset``, the bounding and ambient sets.

The child-side calls here take plain ints prepared in the parent. A
:class:`CapSet` is built once (in the parent) and only read by the child.
"""

from __future__ import annotations

import ctypes
import functools
from typing import Final

from ._syscalls import _bind, _check, _libc_gil, prctl

PR_SET_KEEPCAPS: Final = 8
PR_CAPBSET_READ: Final = 23
PR_CAPBSET_DROP: Final = 24
PR_SET_NO_NEW_PRIVS: Final = 38
PR_GET_NO_NEW_PRIVS: Final = 39
PR_CAP_AMBIENT: Final = 47
PR_CAP_AMBIENT_RAISE: Final = 2
PR_CAP_AMBIENT_CLEAR_ALL: Final = 4

_LINUX_CAPABILITY_VERSION_3: Final = 0x20080522

# capability(7) numbers; the list ends at CAP_CHECKPOINT_RESTORE (Linux 5.9).
CAP_NAMES: Final = (
    "chown", "dac_override", "dac_read_search", "fowner", "fsetid", "kill", "setgid",
    "setuid", "setpcap", "linux_immutable", "net_bind_service", "net_broadcast",
    "net_admin", "net_raw", "ipc_lock", "ipc_owner", "sys_module", "sys_rawio",
    "sys_chroot", "sys_ptrace", "sys_pacct", "sys_admin", "sys_boot", "sys_nice",
    "sys_resource", "sys_time", "sys_tty_config", "mknod", "lease", "audit_write",
    "audit_control", "setfcap", "mac_override", "mac_admin", "syslog", "wake_alarm",
    "block_suspend", "audit_read", "perfmon", "bpf", "checkpoint_restore",
)  # fmt: skip
CAP_SETPCAP: Final = 8
CAP_SYS_ADMIN: Final = 21
CAP_SYS_RESOURCE: Final = 24


def cap_number(name: str) -> int:
    """``"CAP_NET_RAW"``, ``"net_raw"`` or ``"NET_RAW"`` → 13; ``ValueError`` if unknown."""
    key = name.lower().removeprefix("cap_")
    try:
        return CAP_NAMES.index(key)
    except ValueError:
        raise ValueError(f"unknown capability {name!r}") from None


@functools.cache
def cap_last_cap() -> int:
    """The highest capability this kernel knows (``/proc/sys/kernel/cap_last_cap``)."""
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except (OSError, ValueError):  # pragma: no cover - /proc without it
        return len(CAP_NAMES) - 1


def status_caps(field: str = "CapEff", pid: int | str = "self") -> int:
    """A capability mask from ``/proc/PID/status`` (``CapEff``, ``CapBnd``...)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1], 16)
    return 0  # pragma: no cover


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


_capset = _bind(_libc_gil, "capset", ctypes.c_void_p, ctypes.c_void_p)


class CapSet:
    """Effective = permitted = inheritable = ``mask``, ready for :meth:`apply`.

    The ctypes structures are made here (in the parent): the child only
    passes their addresses to ``capset(2)``.
    """

    __slots__ = ("_data", "_header", "mask")

    def __init__(self, mask: int) -> None:
        self.mask = mask
        self._header = _Header(_LINUX_CAPABILITY_VERSION_3, 0)
        lo, hi = mask & 0xFFFFFFFF, mask >> 32
        self._data = (_Data * 2)(_Data(lo, lo, lo), _Data(hi, hi, hi))

    def __reduce__(self) -> tuple[type[CapSet], tuple[int]]:
        # Rebuilt from the mask (a spawner process receives Sandbox steps).
        return (CapSet, (self.mask,))

    def apply(self) -> None:
        """``capset(2)`` on the calling thread."""
        _check(_capset, ctypes.addressof(self._header), ctypes.addressof(self._data))


def drop_bounding(keep: int, last: int) -> None:
    """Drop every capability not in ``keep`` from the bounding set (needs CAP_SETPCAP)."""
    for cap in range(last + 1):
        if not keep >> cap & 1:
            prctl(PR_CAPBSET_DROP, cap)


def raise_ambient(mask: int, last: int) -> None:
    """Clear the ambient set, then raise ``mask`` in it (must be permitted and inheritable)."""
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    for cap in range(last + 1):
        if mask >> cap & 1:
            prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap)


def set_keepcaps(on: bool) -> None:
    """``PR_SET_KEEPCAPS``: keep permitted capabilities across a uid change."""
    prctl(PR_SET_KEEPCAPS, int(on))


def set_no_new_privs() -> None:
    """``PR_SET_NO_NEW_PRIVS``: execve never grants privileges again (setuid, file caps)."""
    prctl(PR_SET_NO_NEW_PRIVS, 1)


def get_no_new_privs() -> bool:
    return bool(prctl(PR_GET_NO_NEW_PRIVS))
