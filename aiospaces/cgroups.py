"""cgroup limits for sandboxes: what the host offers, and one cgroup per sandbox.

A :class:`~aiospaces.Sandbox` with ``memory_max``, ``memory_swap_max``,
``pids_max`` or ``cpu_max`` (or ``cgroup=True``) gets its own cgroup, made
when the spec is compiled and removed once the child is reaped (after
whatever is left in it is killed): nothing stays under the cgroup trees.

* **cgroup v2** (preferred): a leaf under this process' own cgroup, which
  must be delegated to it (writable, with the controllers available). The
  child is cloned straight into it (``CLONE_INTO_CGROUP``, Linux 5.7).
* **cgroup v1** (older hosts, and hosts whose v2 hierarchy has no
  controllers, like this project's CI): a directory in each controller's
  hierarchy under this process' own cgroup; the parent attaches the child's
  pid during the handshake, before the child's "go".

:func:`available` says what works here::

    >>> from aiospaces import cgroups
    >>> support = cgroups.available()
    >>> support.limits <= {"memory_max", "memory_swap_max", "pids_max", "cpu_max"}
    True
    >>> print(support.describe())  # doctest: +SKIP
    cgroup v1: memory, pids, cpu, cpuacct under /sys/fs/cgroup/<controller>/...

Asking for a limit nothing here can enforce raises :class:`CgroupUnavailable`
(a :class:`~aiospaces.SpawnError` with ``step="cgroup"``) whose ``hint`` says
how to get one — unprivileged, typically a delegated v2 subtree::

    systemd-run --user --scope -p Delegate=yes python app.py
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

from . import _cgroup_v1 as v1
from . import _cgroup_v2 as v2
from ._errors import SpawnError

__all__ = [
    "CgroupLimits",
    "CgroupSupport",
    "CgroupUnavailable",
    "SandboxCgroup",
    "available",
]

LIMITS: Final = ("memory_max", "memory_swap_max", "pids_max", "cpu_max")
CPU_PERIOD_US: Final = 100_000
DELEGATE_HINT: Final = (
    "run this program in a delegated cgroup v2 subtree, e.g. "
    "`systemd-run --user --scope -p Delegate=yes python app.py` (or, in a container, "
    "give it a writable cgroup v2 mount with the controllers enabled)"
)
_counter = itertools.count(1)
CgroupVersion = Literal[1, 2]


class CgroupUnavailable(SpawnError):
    """A cgroup limit was asked for and nothing on this host can enforce it.

    ``hint`` says how to get a cgroup that can (a delegated v2 subtree).
    """


@dataclass(frozen=True, slots=True)
class CgroupLimits:
    """The cgroup limits of a sandbox (already validated by :class:`~aiospaces.Sandbox`)."""

    memory_max: int | None = None
    memory_swap_max: int | None = None
    pids_max: int | None = None
    cpu_max: float | None = None

    def names(self) -> frozenset[str]:
        return frozenset(n for n in LIMITS if getattr(self, n) is not None)

    def controllers(self) -> frozenset[str]:
        return frozenset(v2.CONTROLLER_OF[n] for n in self.names())


@dataclass(frozen=True, slots=True)
class CgroupSupport:
    """What :func:`available` found.

    ``version`` is what a sandbox with limits would use (2, 1 or None);
    ``limits`` the Sandbox fields that can be enforced; ``v2_base`` the
    delegated v2 cgroup sandboxes go under (None if there is none) and
    ``v2_controllers`` the controllers it offers; ``v1`` maps each usable v1
    controller to the directory sandboxes go under; ``reason`` explains.
    """

    version: CgroupVersion | None
    limits: frozenset[str]
    v2_base: str | None
    v2_controllers: frozenset[str]
    v1: Mapping[str, str] = field(default_factory=dict)
    reason: str = ""

    def describe(self) -> str:
        parts = []
        if self.v2_base is not None:
            ctl = ", ".join(sorted(self.v2_controllers)) or "no controllers"
            parts.append(f"cgroup v2 at {self.v2_base} ({ctl})")
        if self.v1:
            parts.append(
                "cgroup v1: " + ", ".join(f"{c} under {d}" for c, d in sorted(self.v1.items()))
            )
        if not parts:
            parts.append("no usable cgroup")
        if self.reason:
            parts.append(self.reason)
        return "; ".join(parts)


# --- host detection ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Mount:
    root: str
    point: str
    fstype: str
    options: frozenset[str]
    readonly: bool


def _mounts() -> list[_Mount]:
    out: list[_Mount] = []
    try:
        with open("/proc/self/mountinfo") as f:
            lines = f.read().splitlines()
    except OSError:  # pragma: no cover
        return out
    for line in lines:
        left, _, right = line.partition(" - ")
        a, b = left.split(), right.split()
        if len(a) < 6 or len(b) < 3 or b[0] not in ("cgroup", "cgroup2"):
            continue
        out.append(
            _Mount(
                _unescape(a[3]),
                _unescape(a[4]),
                b[0],
                frozenset(b[2].split(",")),
                "ro" in a[5].split(","),
            )
        )
    return out


def _unescape(s: str) -> str:
    return s.replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")


def _own_paths() -> tuple[str | None, dict[str, str]]:
    """This process' v2 path and its v1 path per controller (``/proc/self/cgroup``)."""
    unified: str | None = None
    per: dict[str, str] = {}
    try:
        with open("/proc/self/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:  # pragma: no cover
        return None, per
    for line in lines:
        hid, ctl, path = line.split(":", 2)
        if hid == "0" and not ctl:
            unified = path
        else:
            for c in ctl.split(","):
                if c:
                    per[c] = path
    return unified, per


def _join(m: _Mount, path: str) -> str | None:
    """The directory of cgroup ``path`` under mount ``m`` (None if not visible there)."""
    root = m.root.rstrip("/")
    if root and not (path == root or path.startswith(root + "/")):
        return None
    rest = path[len(root) :].lstrip("/")
    return os.path.join(m.point, rest) if rest else m.point


def _usable_dir(d: str) -> bool:
    return (
        os.path.isdir(d)
        and os.access(d, os.W_OK)
        and os.access(os.path.join(d, "cgroup.procs"), os.W_OK)
    )


def _probe() -> CgroupSupport:
    mounts = _mounts()
    unified, per = _own_paths()
    v2_base: str | None = None
    v2_ctl: frozenset[str] = frozenset()
    notes = []
    if unified is not None:
        if unified.endswith("/" + v2.SUPERVISOR_LEAF):  # we moved ourselves (see v2.enable)
            unified = unified[: -len(v2.SUPERVISOR_LEAF) - 1] or "/"
        for m in mounts:
            if m.fstype != "cgroup2" or m.readonly:
                continue
            d = _join(m, unified)
            if d is None or not os.path.isdir(d):
                continue
            if v2.delegated(d):
                v2_base = d
                v2_ctl = v2.controllers(d)
            else:
                notes.append(f"the cgroup v2 directory {d} is not delegated to this user")
            break
    v1_dirs: dict[str, str] = {}
    for m in mounts:
        if m.fstype != "cgroup" or m.readonly:
            continue
        for c in ("memory", "pids", "cpu", "cpuacct"):
            if c in m.options and c in per and c not in v1_dirs:
                d = _join(m, per[c])
                if d is not None and _usable_dir(d):
                    v1_dirs[c] = d
    v2_limits = frozenset(n for n in LIMITS if v2.CONTROLLER_OF[n] in v2_ctl)
    v1_limits = frozenset(n for n in LIMITS if v1.CONTROLLER_OF[n] in v1_dirs)
    if "memory" in v1_dirs and not os.path.exists(
        os.path.join(v1_dirs["memory"], "memory.memsw.limit_in_bytes")
    ):
        notes.append("cgroup v1 has no swap accounting (boot with swapaccount=1)")
        v1_limits -= {"memory_swap_max"}
    if v2_base is not None and v2_limits >= v1_limits:
        version: CgroupVersion | None = 2
        limits = v2_limits
    elif v1_limits:
        version, limits = 1, v1_limits
    elif v2_base is not None:
        version, limits = 2, frozenset()
    else:
        version, limits = None, frozenset()
    if not limits:
        notes.append("no cgroup controller is available to this process")
    return CgroupSupport(version, limits, v2_base, v2_ctl, v1_dirs, "; ".join(notes))


_cached: list[CgroupSupport] = []


def available(*, refresh: bool = False) -> CgroupSupport:
    """What cgroup limits this process can put on its sandboxes (probed once, cached).

    >>> available().version in (1, 2, None)
    True
    """
    if refresh or not _cached:
        _cached[:] = [_probe()]
    return _cached[0]


def _unavailable(
    limits: CgroupLimits, version: CgroupVersion | None, s: CgroupSupport
) -> CgroupUnavailable:
    wanted = sorted(limits.names()) or ["a cgroup"]
    where = f"cgroup v{version}" if version else "any cgroup"
    msg = f"{', '.join(wanted)} cannot be enforced: {where} offers no way here ({s.describe()})"
    hint = DELEGATE_HINT
    if os.geteuid() == 0:
        hint = (
            "mount the cgroup controllers (cgroup v2: `mount -t cgroup2 none /sys/fs/cgroup` with "
            "+memory +pids +cpu in cgroup.subtree_control), or " + DELEGATE_HINT
        )
    return CgroupUnavailable(errno.EOPNOTSUPP, msg, step="cgroup", hint=hint)


def choose(
    limits: CgroupLimits, version: CgroupVersion | None
) -> tuple[CgroupVersion, CgroupSupport]:
    """Pick the cgroup version for ``limits`` (``version`` forces one) or raise."""
    s = available()
    need = limits.names()
    can2 = s.v2_base is not None and need <= frozenset(
        n for n in LIMITS if v2.CONTROLLER_OF[n] in s.v2_controllers
    )
    v1_ok = frozenset(n for n in LIMITS if v1.CONTROLLER_OF[n] in s.v1)
    if "memory" in s.v1 and not os.path.exists(
        os.path.join(s.v1["memory"], "memory.memsw.limit_in_bytes")
    ):
        v1_ok -= {"memory_swap_max"}
    can1 = bool(s.v1) and need <= v1_ok
    if version == 2 and can2:
        return 2, s
    if version == 1 and can1:
        return 1, s
    if version is None:
        if can2:
            return 2, s
        if can1:
            return 1, s
    raise _unavailable(limits, version, s)


# --- one sandbox's cgroup ------------------------------------------------------------------


class SandboxCgroup:
    """The cgroup (v2: one leaf; v1: one directory per controller) of one sandbox.

    Made by :func:`create`; :meth:`remove` kills what is left in it and
    removes the directories (True once they are all gone).
    """

    def __init__(self, version: CgroupVersion, leaf: str, dirs: dict[str, str]) -> None:
        self.version: CgroupVersion = version
        self.leaf = leaf  # the directories' (unique) name
        self.dirs = dirs  # v2: {"": path}; v1: {controller: path}
        self.fd = -1
        self.removed = False

    def __repr__(self) -> str:
        return f"<SandboxCgroup v{self.version} {sorted(self.dirs.values())}>"

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(self.dirs.values())

    def open_fd(self) -> int:
        """v2: an fd of the leaf for ``CLONE_INTO_CGROUP`` (closed by :meth:`close_fd`)."""
        if self.version == 2 and self.fd < 0:
            self.fd = os.open(self.dirs[""], os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        return self.fd

    def close_fd(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    def attach(self, pid: int) -> None:
        """Put ``pid`` in the sandbox's cgroup (v1; on v2, only if the clone did not)."""
        if self.version == 2:
            d = self.dirs[""]
            if pid not in v2.procs(d):
                v2.write(os.path.join(d, "cgroup.procs"), str(pid))
            return
        for d in self.dirs.values():
            v1.attach(d, pid)

    def kill(self) -> None:
        """SIGKILL every process in the sandbox's cgroup."""
        if self.removed:
            return
        if self.version == 2:
            v2.kill(self.dirs[""])
        else:
            v1.kill(self.dirs, self.leaf)

    def oom_kills(self) -> int:
        """How many processes the OOM killer killed in this cgroup."""
        if self.version == 2:
            return v2.oom_kills(self.dirs[""])
        d = self.dirs.get("memory")
        return v1.oom_kills(d) if d else 0

    def cpu_usage_ns(self) -> int | None:
        """CPU time used by everything in this cgroup, in ns (None if not accounted)."""
        if self.version == 2:
            return v2.cpu_usage_ns(self.dirs[""])
        d = self.dirs.get("cpuacct")
        return v1.cpu_usage_ns(d) if d else None

    def populated(self) -> bool:
        if self.version == 2:
            return v2.populated(self.dirs[""])
        return any(v1.procs(d) for d in self.dirs.values())

    def remove(self) -> bool:
        """Kill what is left, remove the directories; True once all are gone."""
        self.close_fd()
        if self.removed:
            return True
        self.kill()
        left = {}
        for c, d in self.dirs.items():
            try:
                os.rmdir(d)
            except FileNotFoundError:
                pass
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    raise
                left[c] = d
        self.dirs = left or self.dirs
        self.removed = not left
        return self.removed


def create(limits: CgroupLimits, version: CgroupVersion | None = None) -> SandboxCgroup:
    """Make and configure a sandbox cgroup for ``limits``; raises :class:`CgroupUnavailable`.

    Any other failure is a ``SpawnError`` with ``step="cgroup"`` naming the file.
    """
    ver, s = choose(limits, version)
    leaf = f"aiospaces-{os.getpid()}-{next(_counter)}"
    args = (
        limits.memory_max,
        limits.memory_swap_max,
        limits.pids_max,
        limits.cpu_max,
        CPU_PERIOD_US,
    )
    made: dict[str, str] = {}
    cg = SandboxCgroup(ver, leaf, made)
    try:
        if ver == 2:
            assert s.v2_base is not None
            base = v2.enable(s.v2_base, limits.controllers(), s.v2_base == _v2_mount_root(s))
            d = os.path.join(base, leaf)
            os.mkdir(d, 0o755)
            made[""] = d
            for name, value in v2.limit_files(*args):
                v2.write(os.path.join(d, name), value)
        else:
            files = v1.limit_files(*args)
            wanted = set(files) | {c for c in ("pids", "cpuacct", "memory") if c in s.v1}
            for c in sorted(wanted):
                d = os.path.join(s.v1[c], leaf)
                if d not in made.values():  # co-mounted controllers (cpu,cpuacct) share it
                    os.mkdir(d, 0o755)
                made[c] = d
                for name, value in files.get(c, ()):
                    v2.write(os.path.join(d, name), value)
    except OSError as exc:
        with contextlib.suppress(OSError):
            cg.remove()
        if isinstance(exc, SpawnError):
            raise
        raise SpawnError(
            exc.errno or errno.EIO,
            exc.strerror,
            exc.filename,
            step="cgroup",
            hint=DELEGATE_HINT if exc.errno in (errno.EACCES, errno.EPERM) else None,
        ) from exc
    return cg


def _v2_mount_root(s: CgroupSupport) -> str | None:
    for m in _mounts():
        if m.fstype == "cgroup2" and m.root == "/" and s.v2_base == m.point:
            return m.point
    return None
