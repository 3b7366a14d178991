"""cgroup v1: one directory per controller hierarchy, the pid attached during the handshake.

::

    /sys/fs/cgroup/memory/<own path>/aiospaces-<pid>-<n>/   memory.limit_in_bytes, ...
    /sys/fs/cgroup/pids/<own path>/aiospaces-<pid>-<n>/     pids.max
    /sys/fs/cgroup/cpu/<own path>/aiospaces-<pid>-<n>/      cpu.cfs_quota_us / cfs_period_us
    /sys/fs/cgroup/cpuacct/<own path>/aiospaces-<pid>-<n>/  cpuacct.usage (accounting only)

v1 has no ``CLONE_INTO_CGROUP``: the parent writes the child's pid into each
directory's ``cgroup.procs`` while the child waits for its "go", so it is in
its cgroups before it runs any code of its own. OOM kills are counted in
``memory.oom_control`` (``oom_kill``, 4.13), CPU time in ``cpuacct.usage``.
v1 has no ``cgroup.kill``: :func:`kill` stops forks with ``pids.max = 0``
(lowering it below ``pids.current`` is allowed) and SIGKILLs what is left,
through pidfds, until the cgroup is empty.
"""

from __future__ import annotations

import contextlib
import os
import signal

from ._cgroup_v2 import keyed, read, write

CONTROLLER_OF = {
    "memory_max": "memory",
    "memory_swap_max": "memory",
    "pids_max": "pids",
    "cpu_max": "cpu",
}


def limit_files(
    memory_max: int | None,
    memory_swap_max: int | None,
    pids_max: int | None,
    cpu_max: float | None,
    period_us: int,
) -> dict[str, list[tuple[str, str]]]:
    """Per controller, ``(file, value)`` pairs in the order they must be written.

    v1's ``memory.memsw.limit_in_bytes`` is memory *plus* swap and may not be
    below ``memory.limit_in_bytes``: it is written after it, as their sum.
    """
    out: dict[str, list[tuple[str, str]]] = {}
    if memory_max is not None:
        mem = [("memory.limit_in_bytes", str(memory_max))]
        if memory_swap_max is not None:
            mem.append(("memory.memsw.limit_in_bytes", str(memory_max + memory_swap_max)))
        out["memory"] = mem
    if pids_max is not None:
        out["pids"] = [("pids.max", str(pids_max))]
    if cpu_max is not None:
        out["cpu"] = [
            ("cpu.cfs_period_us", str(period_us)),
            ("cpu.cfs_quota_us", str(max(1000, round(cpu_max * period_us)))),
        ]
    return out


def procs(d: str) -> list[int]:
    try:
        return [int(p) for p in read(os.path.join(d, "cgroup.procs")).split()]
    except OSError:
        return []


def attach(d: str, pid: int) -> None:
    write(os.path.join(d, "cgroup.procs"), str(pid))


def _in_cgroup(pid: int, leaf: str) -> bool:
    try:
        text = read(f"/proc/{pid}/cgroup")
    except OSError:
        return False
    return any(line.rsplit("/", 1)[-1] == leaf for line in text.splitlines())


def kill(dirs: dict[str, str], leaf: str, rounds: int = 100) -> bool:
    """SIGKILL every process in the sandbox's v1 cgroups; True once they are empty.

    ``leaf`` is the sandbox directories' (unique) name: a pid is signalled
    through a pidfd after ``/proc/PID/cgroup`` showed it still in the
    sandbox, so a recycled pid is never hit.
    """
    pids_dir = dirs.get("pids")
    if pids_dir is not None:
        with contextlib.suppress(OSError):
            write(os.path.join(pids_dir, "pids.max"), "0")
    for _ in range(rounds):
        live = set()
        for d in dirs.values():
            live.update(procs(d))
        if not live:
            return True
        for pid in live:
            try:
                fd = os.pidfd_open(pid)
            except OSError:
                continue
            try:
                if _in_cgroup(pid, leaf):
                    with contextlib.suppress(ProcessLookupError):
                        signal.pidfd_send_signal(fd, signal.SIGKILL)
            finally:
                os.close(fd)
    return False


def oom_kills(d: str) -> int:
    return keyed(os.path.join(d, "memory.oom_control"), "oom_kill") or 0


def cpu_usage_ns(d: str) -> int | None:
    try:
        return int(read(os.path.join(d, "cpuacct.usage")))
    except (OSError, ValueError):
        return None
