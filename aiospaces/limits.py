"""Resource limits of a :class:`~aiospaces.Sandbox`: rlimits, a wall-clock timeout, and
what a death means (OOM, CPU limit, timeout).

``rlimits`` names any ``RLIMIT_*`` (``"NOFILE"`` or ``"RLIMIT_NOFILE"``, any
case). A value is an int (soft = hard), ``None``/``"unlimited"``, or a
``(soft, hard)`` pair. An int for ``CPU`` sets the hard limit one second
above the soft one, so the process first gets SIGXCPU (``reason ==
"cpu-limit"``) and SIGKILL only if it survives that::

    Sandbox(namespaces={"user"}, rlimits={"NOFILE": 64, "CPU": 2, "AS": 512 << 20})

Raising a *hard* limit above this process' own needs CAP_SYS_RESOURCE in the
initial user namespace (a new user namespace does not grant it): such a
spec fails at spawn with a ``PermissionError`` naming the limit.

``timeout`` (seconds of wall-clock time from the end of the handshake) kills
the whole sandbox — ``cgroup.kill`` (v2) or every pid in its cgroup (v1),
otherwise PID 1 of its pid namespace (the kernel then kills the rest), or
just the child — and ``child.result()`` raises ``TimeoutError``.

How a child died is in ``ChildKilled.reason``: ``"oom"`` (the sandbox's
cgroup counted an OOM kill and the child died by SIGKILL), ``"cpu-limit"``
(SIGXCPU, or SIGKILL at the hard RLIMIT_CPU), ``"timeout"``, ``"seccomp"``
(SIGSYS from a ``"kill"`` rule), else ``"signal"``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import resource
import select
import signal
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from ._errors import SpawnError
from .cgroups import SandboxCgroup

if TYPE_CHECKING:
    from ._launch import Launched

__all__ = ["RLIMITS", "Rlimit", "SandboxGuard", "parse_rlimits", "parse_size"]

INFINITY: Final = resource.RLIM_INFINITY
RLIMITS: Final = {
    name.removeprefix("RLIMIT_"): getattr(resource, name)
    for name in dir(resource)
    if name.startswith("RLIMIT_")
}
"""Every rlimit this Python knows, by short name (``"NOFILE"``, ``"CPU"``, ...)."""

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b?)\s*$", re.IGNORECASE)
_UNITS: Final = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


def parse_size(value: object, field: str) -> int | None:
    """Bytes from an int or a string such as ``"512M"``/``"1.5GiB"`` (binary units).

    >>> parse_size("512M", "memory_max")
    536870912
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError(f"{field} must be a number of bytes, not a bool")
    if isinstance(value, int):
        n = value
    elif isinstance(value, str):
        m = _SIZE.match(value)
        if m is None:
            raise ValueError(f"{field}: {value!r} is not a size such as 512M or 1G")
        n = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    else:
        raise TypeError(f"{field} must be an int or a size string, not {type(value).__name__}")
    if n < 0:
        raise ValueError(f"{field} must not be negative")
    return n


@dataclass(frozen=True, slots=True)
class Rlimit:
    """One rlimit, applied in the child (``setrlimit``)."""

    resource: int
    limit_name: str
    soft: int
    hard: int

    @property
    def name(self) -> str:
        return f"rlimit {self.limit_name}"

    def run(self) -> None:
        try:
            resource.setrlimit(self.resource, (self.soft, self.hard))
        except ValueError as exc:  # resource reports EINVAL/EPERM as ValueError sometimes
            raise OSError(1, str(exc), self.limit_name) from None


def _rlim(value: object, where: str) -> int:
    if value is None or value == "unlimited":
        return INFINITY
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{where}: a limit is an int, None or 'unlimited', not {value!r}")
    if value < 0:
        raise ValueError(f"{where}: {value} is negative")
    return value


def _above(a: int, b: int) -> bool:
    """``a > b`` for rlimit values (``RLIM_INFINITY`` is -1 in Python, and the largest)."""
    if a in (b, INFINITY):
        return a != b
    return b != INFINITY and a > b


def parse_rlimits(value: object) -> tuple[Rlimit, ...]:
    """Validate ``rlimits`` into sorted :class:`Rlimit` entries.

    >>> [(r.limit_name, r.soft, r.hard) for r in parse_rlimits({"nofile": 64, "CPU": 2})]
    [('CPU', 2, 3), ('NOFILE', 64, 64)]
    """
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise TypeError(f"rlimits must be a mapping such as {{'NOFILE': 256}}, not {value!r}")
    out: dict[str, Rlimit] = {}
    for key, limit in value.items():
        if not isinstance(key, str):
            raise TypeError(f"rlimits: {key!r} is not a name")
        name = key.upper().removeprefix("RLIMIT_")
        if name not in RLIMITS:
            known = ", ".join(sorted(RLIMITS))
            raise ValueError(f"rlimits: unknown limit {key!r} (known: {known})")
        where = f"rlimits[{key!r}]"
        if isinstance(limit, tuple):
            if len(limit) != 2:
                raise ValueError(f"{where}: a pair is (soft, hard)")
            soft, hard = _rlim(limit[0], where), _rlim(limit[1], where)
        else:
            soft = hard = _rlim(limit, where)
            if name == "CPU" and soft != INFINITY:
                hard = soft + 1  # SIGXCPU first, SIGKILL a second later
        if _above(soft, hard):
            raise ValueError(f"{where}: the soft limit {soft} is above the hard limit {hard}")
        out[name] = Rlimit(RLIMITS[name], name, soft, hard)
    return tuple(out[k] for k in sorted(out))


def check_raisable(limits: tuple[Rlimit, ...], have_sys_resource: bool) -> None:
    """``PermissionError`` if a hard limit exceeds ours and we lack CAP_SYS_RESOURCE."""
    if have_sys_resource:
        return
    for r in limits:
        _, current = resource.getrlimit(r.resource)
        if _above(r.hard, current):
            shown = "unlimited" if r.hard == INFINITY else r.hard
            raise PermissionError(
                f"rlimits: {r.limit_name} hard limit {shown} is above this process' own "
                f"({current}); raising a hard limit needs CAP_SYS_RESOURCE in the initial "
                "user namespace"
            )


# --- the parent's watch over one sandbox ---------------------------------------------------

_RETRY_FIRST = 0.005
_RETRY_MAX = 0.1
_RETRY_DEADLINE = 10.0


def _readable(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


class SandboxGuard:
    """Cgroup attach, timeout, cleanup and the cause of death for one sandboxed child.

    Made by :meth:`Sandbox.compile <aiospaces.Sandbox.compile>` when the
    sandbox has a cgroup, a timeout, an RLIMIT_CPU or a killing seccomp
    rule, and run as its last parent-side step (``await guard(pid)``, before
    the child's "go"): it attaches the child to its cgroup (v1, or v2 when
    the clone did not), opens its own pidfd for the child and arms the
    timeout. It needs nothing else from the spawning code, so every
    spawning path that runs the parent steps gets it.

    When the child exits (its pidfd turns readable; the reaping stays with
    the spawner) the guard reads the OOM counter, kills whatever is left in
    the cgroup and removes it, retrying while the kernel still holds exiting
    tasks; :meth:`settled` waits for that. :meth:`supervise` (optional) lets
    the reaper's ``on_reaped`` hook speed up the removal and tells the guard
    which SIGKILLs the parent sent.
    """

    def __init__(
        self,
        *,
        cgroup: SandboxCgroup | None = None,
        timeout: float | None = None,
        cpu_hard: int | None = None,
        seccomp_kills: bool = False,
    ) -> None:
        self.cgroup = cgroup
        self.timeout = timeout
        self.cpu_hard = cpu_hard
        self.seccomp_kills = seccomp_kills
        self.timed_out = False
        self.oom_killed = False
        self.exited = False
        self.name = "sandbox guard"
        self._watched = False
        self._pidfd = -1
        self._loop: asyncio.AbstractEventLoop | None = None
        self._core: Launched | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._retry_handle: asyncio.TimerHandle | None = None
        self._t0 = 0.0
        self._deadline = 0.0
        self._delay = _RETRY_FIRST
        self._settled: asyncio.Future[None] | None = None
        self._killed_by_us = False

    def __repr__(self) -> str:
        return f"<SandboxGuard cgroup={self.cgroup!r} timeout={self.timeout}>"

    # -- life cycle ------------------------------------------------------------------
    async def __call__(self, pid: int) -> None:
        """The parent-side step: attach, watch, arm the timeout (once)."""
        if self._watched:
            raise RuntimeError("a compiled sandbox guards one child: compile it again")
        if self.cgroup is not None:
            try:
                self.cgroup.attach(pid)
            except OSError as exc:
                raise SpawnError(
                    exc.errno or errno.EIO, exc.strerror, exc.filename, step="cgroup attach"
                ) from exc
        loop = asyncio.get_running_loop()
        pidfd = os.pidfd_open(pid)
        try:
            loop.add_reader(pidfd, self._on_exit)
        except BaseException:
            os.close(pidfd)
            raise
        self._watched = True
        self._loop = loop
        self._pidfd = pidfd
        self._settled = loop.create_future()
        self._t0 = time.monotonic()
        if self.timeout is not None:
            self._timer = loop.call_later(self.timeout, self._expire)

    def supervise(self, core: Launched) -> None:
        """Optional: the spawner's handle, for ``sent_kill`` and a prompt cleanup."""
        self._core = core
        core.on_reaped.append(self._on_reaped)

    def release(self) -> None:
        """The spawn is over (``CompiledSandbox.close``): if it failed, clean up now.

        Never watched (it failed before the guard ran): remove the cgroup.
        Watched, but the child is already dead (it failed after): close the
        pidfd and start the cleanup without waiting for the loop.
        """
        if self._watched:
            if self._pidfd >= 0 and _readable(self._pidfd):
                self._on_exit()
            return
        if self.cgroup is None:
            return
        self._watched = True
        if not self._remove_now():
            warnings.warn(
                f"aiospaces: could not remove {self.cgroup!r} (still busy)",
                ResourceWarning,
                stacklevel=2,
            )

    def _remove_now(self, attempts: int = 50) -> bool:
        assert self.cgroup is not None
        for _ in range(attempts):
            with contextlib.suppress(OSError):
                if self.cgroup.remove():
                    return True
            time.sleep(0.002)
        return False

    def kill(self) -> None:
        """SIGKILL the whole sandbox: its cgroup, and the child (PID 1 takes its ns along)."""
        self._killed_by_us = True
        if self.cgroup is not None:
            with contextlib.suppress(OSError):
                self.cgroup.kill()
        if self._pidfd >= 0:
            with contextlib.suppress(ProcessLookupError, OSError):
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)

    def _expire(self) -> None:
        self._timer = None
        if not self.exited:
            self.timed_out = True
            self.kill()

    def _on_exit(self) -> None:
        # The child is a zombie now (or reaped): stop watching, then clean up.
        fd, self._pidfd = self._pidfd, -1
        if fd < 0:
            return
        assert self._loop is not None
        with contextlib.suppress(Exception):
            self._loop.remove_reader(fd)
        os.close(fd)
        self.exited = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._deadline = time.monotonic() + _RETRY_DEADLINE
        self._cleanup()

    def _on_reaped(self, rc: int | None) -> None:
        if self.exited and self._settled is not None and not self._settled.done():
            self._cleanup()  # the zombie is gone: the cgroup may be removable now

    def _cleanup(self) -> None:
        assert self._settled is not None and self._loop is not None
        if self._retry_handle is not None:
            self._retry_handle.cancel()
            self._retry_handle = None
        if self._settled.done():
            return
        if self.cgroup is None:
            self._settled.set_result(None)
            return
        error: OSError | None = None
        try:
            self.oom_killed = self.oom_killed or self.cgroup.oom_kills() > 0
            done = self.cgroup.remove()
        except OSError as exc:
            done, error = False, exc
        loop = self._loop
        if done or loop.is_closed():
            self._settled.set_result(None)
            return
        if time.monotonic() > self._deadline:
            self._settled.set_result(None)
            loop.call_exception_handler(
                {
                    "message": f"aiospaces: could not remove {self.cgroup!r}",
                    "exception": error or OSError(errno.EBUSY, "the cgroup stayed busy"),
                }
            )
            return
        self._retry_handle = loop.call_later(self._delay, self._cleanup)
        self._delay = min(self._delay * 2, _RETRY_MAX)

    async def settled(self) -> None:
        """Wait until the child's cgroup is gone (at once without one)."""
        if self._settled is not None and not self._settled.done():
            await asyncio.shield(self._settled)

    # -- what happened ------------------------------------------------------------------
    def reason(self, rc: int) -> str:
        """Why a child that ended with ``rc`` (negative: by a signal) died."""
        if self.timed_out:
            return "timeout"
        sig = -rc
        if sig == signal.SIGKILL and self.oom_killed:
            return "oom"
        if self.cpu_hard is not None:
            if sig == signal.SIGXCPU:
                return "cpu-limit"
            sent_kill = self._killed_by_us or (self._core is not None and self._core.sent_kill)
            if sig == signal.SIGKILL and not sent_kill:
                # SIGKILL at the hard limit (a pid namespace's init ignores SIGXCPU),
                # unless it cannot have used that much CPU time yet.
                elapsed = time.monotonic() - self._t0
                ncpu = len(os.sched_getaffinity(0)) or 1
                if elapsed * ncpu >= self.cpu_hard * 0.9:
                    return "cpu-limit"
        if sig == signal.SIGSYS and self.seccomp_kills:
            return "seccomp"
        return "signal"
