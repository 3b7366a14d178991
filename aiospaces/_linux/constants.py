"""Constants of the Linux ABI: clone flags, syscall numbers, prctl codes.

Values from ``include/uapi/linux/sched.h``, ``prctl.h`` and ``mount.h``.
Nothing here touches ctypes; :mod:`aiospaces._linux._syscalls` does.
"""

from __future__ import annotations

import platform
import signal as _signal

# The seed's stack size: kept for API compatibility. aiospaces itself never
# allocates a clone stack (clone3 with stack=0 behaves like fork).
STACK_SIZE = 1024 * 1024

SIGCHLD = int(_signal.SIGCHLD)
SIGKILL = int(_signal.SIGKILL)

CSIGNAL = 0x000000FF  # exit-signal byte of the legacy clone() flags
CLONE_NEWTIME = 0x00000080  # since 5.6; only clone3 can ask for it (collides with CSIGNAL)
CLONE_VM = 0x00000100
CLONE_FS = 0x00000200
CLONE_FILES = 0x00000400
CLONE_SIGHAND = 0x00000800
CLONE_PIDFD = 0x00001000  # since 5.2
CLONE_PTRACE = 0x00002000
CLONE_VFORK = 0x00004000
CLONE_PARENT = 0x00008000
CLONE_THREAD = 0x00010000
CLONE_NEWNS = 0x00020000
CLONE_SYSVSEM = 0x00040000
CLONE_SETTLS = 0x00080000
CLONE_PARENT_SETTID = 0x00100000
CLONE_CHILD_CLEARTID = 0x00200000
CLONE_DETACHED = 0x00400000
CLONE_UNTRACED = 0x00800000
CLONE_CHILD_SETTID = 0x01000000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_IO = 0x80000000
# clone3-only flags (the 64-bit flag word)
CLONE_CLEAR_SIGHAND = 0x100000000  # since 5.5
CLONE_INTO_CGROUP = 0x200000000  # since 5.7

NAMESPACE_FLAGS = {
    "user": CLONE_NEWUSER,
    "pid": CLONE_NEWPID,
    "mnt": CLONE_NEWNS,
    "net": CLONE_NEWNET,
    "uts": CLONE_NEWUTS,
    "ipc": CLONE_NEWIPC,
    "cgroup": CLONE_NEWCGROUP,
    "time": CLONE_NEWTIME,
}
"""Namespace name (as in ``/proc/PID/ns/``) → clone flag."""

ALL_NAMESPACES = 0
for _flag in NAMESPACE_FLAGS.values():
    ALL_NAMESPACES |= _flag

# Flags that break a Python child: it would share memory, file table or
# signal handlers with the parent interpreter (or need a stack/TLS we do not
# give it). Each maps to the reason given in the ValueError.
FORBIDDEN_FLAGS = {
    CLONE_VM: "shares the parent's memory: two interpreters on one heap corrupt both",
    CLONE_THREAD: "makes a thread, not a process: the interpreter's thread state breaks",
    CLONE_SIGHAND: "shares signal handlers with the parent interpreter",
    CLONE_SETTLS: "needs a TLS block the interpreter cannot provide",
    CLONE_VFORK: "suspends the parent (and its event loop) until the child execs or exits",
    CLONE_FS: "shares cwd/root/umask: the child's chroot or chdir would move the parent",
    CLONE_FILES: "shares the fd table: the child's close/dup2 would close the parent's fds",
    CLONE_PARENT: "makes the child a sibling: the parent could not wait for it",
    CLONE_PARENT_SETTID: "writes into memory the interpreter does not manage",
    CLONE_CHILD_SETTID: "writes into memory the interpreter does not manage",
    CLONE_CHILD_CLEARTID: "writes into memory the interpreter does not manage",
    CLONE_PIDFD: "is always used internally; the pidfd is Child.pidfd",
    CLONE_INTO_CGROUP: "is set by aiospaces itself when a cgroup is asked for",
    CLONE_CLEAR_SIGHAND: "is set by aiospaces itself where needed",
}

# Flags the caller may pass (besides the namespace flags).
HARMLESS_FLAGS = CLONE_SYSVSEM | CLONE_IO | CLONE_DETACHED | CLONE_UNTRACED | CLONE_PTRACE

_MACHINE = platform.machine()
if _MACHINE in ("x86_64", "amd64"):
    SYS_clone = 56
    SYS_pivot_root = 155
    SYS_setns = 308
    SYS_unshare = 272
elif _MACHINE in ("aarch64", "arm64"):
    SYS_clone = 220
    SYS_pivot_root = 41
    SYS_setns = 268
    SYS_unshare = 97
else:  # pragma: no cover - other architectures are untested
    SYS_clone = -1
    SYS_pivot_root = -1
    SYS_setns = -1
    SYS_unshare = -1
# Syscalls added after 5.0 share one number on every architecture.
SYS_pidfd_send_signal = 424
SYS_pidfd_open = 434
SYS_clone3 = 435
SYS_close_range = 436
SYS_pidfd_getfd = 438

PR_SET_PDEATHSIG = 1
PR_GET_PDEATHSIG = 2
PR_SET_DUMPABLE = 4
PR_SET_NAME = 15
PR_CAPBSET_DROP = 24
PR_SET_SECUREBITS = 28
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
PR_SET_CHILD_SUBREAPER = 36

# mount(2) flags
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_STRICTATIME = 1 << 24
MNT_DETACH = 2
