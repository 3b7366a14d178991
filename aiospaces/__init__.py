"""aiospaces: an asyncio-native supervisor for processes in Linux namespaces.

>>> import asyncio, os, aiospaces
>>> async def main() -> int:
...     child = await aiospaces.spawn(os.getpid, aiospaces.CLONE_NEWUSER | aiospaces.CLONE_NEWPID)
...     return await child.result()
>>> asyncio.run(main())  # doctest: +SKIP
1
"""

from ._errors import (
    ChildError,
    ChildExited,
    ChildFailed,
    ChildKilled,
    ChildLost,
    NamespaceUnavailable,
    SpawnError,
)
from ._linux.constants import (
    CLONE_CHILD_CLEARTID,
    CLONE_CHILD_SETTID,
    CLONE_CLEAR_SIGHAND,
    CLONE_DETACHED,
    CLONE_FILES,
    CLONE_FS,
    CLONE_INTO_CGROUP,
    CLONE_IO,
    CLONE_NEWCGROUP,
    CLONE_NEWIPC,
    CLONE_NEWNET,
    CLONE_NEWNS,
    CLONE_NEWPID,
    CLONE_NEWTIME,
    CLONE_NEWUSER,
    CLONE_NEWUTS,
    CLONE_PARENT,
    CLONE_PARENT_SETTID,
    CLONE_PIDFD,
    CLONE_PTRACE,
    CLONE_SETTLS,
    CLONE_SIGHAND,
    CLONE_SYSVSEM,
    CLONE_THREAD,
    CLONE_UNTRACED,
    CLONE_VFORK,
    CLONE_VM,
    SIGCHLD,
    SIGKILL,
    STACK_SIZE,
)
from ._spawn import Child, RemoteTraceback, spawn

__version__ = "0.1.0"

__all__ = [
    "CLONE_CHILD_CLEARTID",
    "CLONE_CHILD_SETTID",
    "CLONE_CLEAR_SIGHAND",
    "CLONE_DETACHED",
    "CLONE_FILES",
    "CLONE_FS",
    "CLONE_INTO_CGROUP",
    "CLONE_IO",
    "CLONE_NEWCGROUP",
    "CLONE_NEWIPC",
    "CLONE_NEWNET",
    "CLONE_NEWNS",
    "CLONE_NEWPID",
    "CLONE_NEWTIME",
    "CLONE_NEWUSER",
    "CLONE_NEWUTS",
    "CLONE_PARENT",
    "CLONE_PARENT_SETTID",
    "CLONE_PIDFD",
    "CLONE_PTRACE",
    "CLONE_SETTLS",
    "CLONE_SIGHAND",
    "CLONE_SYSVSEM",
    "CLONE_THREAD",
    "CLONE_UNTRACED",
    "CLONE_VFORK",
    "CLONE_VM",
    "SIGCHLD",
    "SIGKILL",
    "STACK_SIZE",
    "Child",
    "ChildError",
    "ChildExited",
    "ChildFailed",
    "ChildKilled",
    "ChildLost",
    "NamespaceUnavailable",
    "RemoteTraceback",
    "SpawnError",
    "__version__",
    "spawn",
]
