"""The Linux layer: every ctypes binding, constant, struct and feature probe.

Nothing outside this package imports ctypes. Errors come out as
``OSError(errno, strerror[, filename])``.
"""

from . import constants
from ._syscalls import (
    clone3,
    clone_legacy,
    mount,
    pidfd_open,
    pidfd_send_signal,
    pivot_root,
    prctl,
    set_pdeathsig,
    setdomainname,
    sethostname,
    setns,
    umount2,
    unshare,
    waitid_pidfd,
)
from .clone import clone_child, validate_flags
from .probe import diagnose_clone_error, has_clone3

__all__ = [
    "clone3",
    "clone_child",
    "clone_legacy",
    "constants",
    "diagnose_clone_error",
    "has_clone3",
    "mount",
    "pidfd_open",
    "pidfd_send_signal",
    "pivot_root",
    "prctl",
    "set_pdeathsig",
    "setdomainname",
    "sethostname",
    "setns",
    "umount2",
    "unshare",
    "validate_flags",
    "waitid_pidfd",
]
