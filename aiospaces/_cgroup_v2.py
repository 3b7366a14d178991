"""cgroup v2: one leaf directory per sandbox, entered with ``CLONE_INTO_CGROUP`` (5.7).

::

    BASE/                      the caller's cgroup (delegated to it)
      cgroup.subtree_control   +memory +pids +cpu (enabled once)
      aiospaces-<pid>-<n>/     the sandbox: memory.max, pids.max, cpu.max, ...

The child is created inside the leaf: it never runs an instruction outside
it. Killing uses ``cgroup.kill`` (5.14), OOM kills are counted in
``memory.events``, CPU time in ``cpu.stat`` (``usage_usec``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
from collections.abc import Iterable

# The v2 interface files each limit is written to, by controller.
CONTROLLER_OF = {
    "memory_max": "memory",
    "memory_swap_max": "memory",
    "pids_max": "pids",
    "cpu_max": "cpu",
}
SUPERVISOR_LEAF = "aiospaces-supervisor"


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


def write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def controllers(base: str) -> frozenset[str]:
    """Controllers the parent of ``base`` offers it (``cgroup.controllers``)."""
    try:
        return frozenset(read(os.path.join(base, "cgroup.controllers")).split())
    except OSError:
        return frozenset()


def enabled(base: str) -> frozenset[str]:
    try:
        return frozenset(read(os.path.join(base, "cgroup.subtree_control")).split())
    except OSError:
        return frozenset()


def delegated(base: str) -> bool:
    """Whether this process may make and fill child cgroups under ``base``."""
    return all(
        os.access(p, os.W_OK)
        for p in (
            base,
            os.path.join(base, "cgroup.procs"),
            os.path.join(base, "cgroup.subtree_control"),
        )
    )


def enable(base: str, wanted: Iterable[str], is_root: bool) -> str:
    """Enable ``wanted`` controllers for ``base``'s children; return the base to use.

    cgroup v2's "no internal processes" rule: a non-root cgroup with
    processes in it cannot hand controllers to its children (EBUSY). As
    container runtimes do, this process then moves itself into a leaf
    ``BASE/aiospaces-supervisor`` and enables them on ``BASE``.
    """
    missing = set(wanted) - enabled(base)
    if not missing:
        return base
    line = " ".join("+" + c for c in sorted(missing))
    ctl = os.path.join(base, "cgroup.subtree_control")
    try:
        write(ctl, line)
    except OSError as exc:
        if exc.errno != errno.EBUSY or is_root:
            raise OSError(exc.errno, exc.strerror, ctl) from None
        leaf = os.path.join(base, SUPERVISOR_LEAF)
        with contextlib.suppress(FileExistsError):
            os.mkdir(leaf)
        write(os.path.join(leaf, "cgroup.procs"), str(os.getpid()))
        try:
            write(ctl, line)
        except OSError as exc2:
            raise OSError(exc2.errno, exc2.strerror, ctl) from None
    return base


def limit_files(
    memory_max: int | None,
    memory_swap_max: int | None,
    pids_max: int | None,
    cpu_max: float | None,
    period_us: int,
) -> list[tuple[str, str]]:
    """``(file, value)`` pairs that set the limits in a v2 leaf."""
    out = []
    if memory_max is not None:
        out.append(("memory.max", str(memory_max)))
    if memory_swap_max is not None:
        out.append(("memory.swap.max", str(memory_swap_max)))
    if pids_max is not None:
        out.append(("pids.max", str(pids_max)))
    if cpu_max is not None:
        out.append(("cpu.max", f"{max(1000, round(cpu_max * period_us))} {period_us}"))
    return out


def procs(leaf: str) -> list[int]:
    try:
        return [int(p) for p in read(os.path.join(leaf, "cgroup.procs")).split()]
    except OSError:
        return []


def populated(leaf: str) -> bool:
    try:
        for line in read(os.path.join(leaf, "cgroup.events")).splitlines():
            if line.startswith("populated "):
                return line.split()[1] != "0"
    except OSError:
        return False
    return bool(procs(leaf))


def kill(leaf: str) -> None:
    """SIGKILL everything in ``leaf`` (``cgroup.kill``; a loop before 5.14)."""
    try:
        write(os.path.join(leaf, "cgroup.kill"), "1")
        return
    except FileNotFoundError:
        pass
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return
    for pid in procs(leaf):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def keyed(path: str, wanted: str) -> int | None:
    """The value of ``wanted`` in a flat-keyed file (``key value`` lines), or None."""
    try:
        for line in read(path).splitlines():
            key, _, value = line.partition(" ")
            if key == wanted:
                return int(value)
    except (OSError, ValueError):
        pass
    return None


def oom_kills(leaf: str) -> int:
    return keyed(os.path.join(leaf, "memory.events"), "oom_kill") or 0


def cpu_usage_ns(leaf: str) -> int | None:
    usec = keyed(os.path.join(leaf, "cpu.stat"), "usage_usec")
    return None if usec is None else usec * 1000
