"""What a :class:`~aiospaces.Child` and a :class:`~aiospaces.Process` share:
a launched child, its pidfd, signals through it, and a Sandbox's guard."""

from __future__ import annotations

import asyncio
import signal
from types import TracebackType
from typing import TYPE_CHECKING, Self

from ._errors import ChildLost
from ._launch import Launched

if TYPE_CHECKING:
    from .cgroups import SandboxCgroup
    from .limits import SandboxGuard


class ProcessHandle:
    """Base of the public handles (no public constructor)."""

    __slots__ = ("_core", "_flags", "_guard")

    def __init__(self, core: Launched, flags: int, guard: SandboxGuard | None) -> None:
        self._core = core
        self._flags = flags
        self._guard = guard  # a Sandbox's limits: timeout, OOM, its cgroup

    @property
    def pid(self) -> int:
        """The pid in our namespace (with an init, the init's)."""
        return self._core.pid

    @property
    def pidfd(self) -> int:
        """The pidfd (``-1`` once the child is reaped and it is closed)."""
        return self._core.exit.pidfd

    @property
    def flags(self) -> int:
        return self._flags

    @property
    def returncode(self) -> int | None:
        """``None`` while running, the exit status, or ``-N`` after signal N."""
        return self._core.returncode

    @property
    def oom_killed(self) -> bool:
        """True once reaped if the OOM killer killed a process in the sandbox's cgroup."""
        return self._guard is not None and self._guard.oom_killed

    @property
    def timed_out(self) -> bool:
        """True if the Sandbox's ``timeout`` expired and killed the sandbox."""
        return self._guard is not None and self._guard.timed_out

    @property
    def cgroup(self) -> SandboxCgroup | None:
        """The sandbox's cgroup (removed once the child is reaped), or None."""
        return self._guard.cgroup if self._guard is not None else None

    @property
    def kill_reason(self) -> str | None:
        """Why it died of a signal: ``"oom"``, ``"cpu-limit"``, ``"timeout"``,
        ``"seccomp"`` or ``"signal"``; None while running or after a plain exit."""
        rc = self.returncode
        if rc is None or rc >= 0:
            return None
        return self._guard.reason(rc) if self._guard is not None else "signal"

    def _state(self) -> str:
        if self._core.lost:
            return "lost"
        rc = self.returncode
        return "running" if rc is None else f"returncode={rc}"

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` through the pidfd; ``ProcessLookupError`` once reaped."""
        self._core.send_signal(sig)

    def terminate(self) -> None:
        """SIGTERM."""
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL."""
        self.send_signal(signal.SIGKILL)

    async def _abort(self) -> None:
        """Kill and reap (even if cancelled meanwhile)."""
        await self._core.kill_and_reap()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Leaving the block kills and reaps (and a Sandbox's cgroup is removed)."""
        await self._abort()
        if self._guard is not None:
            await self._guard.settled()

    async def _reaped(self) -> None:
        """Wait until reaped (and a Sandbox's cgroup is gone); ChildLost if stolen.

        Cancelling leaves the child alone (the shared future is shielded)."""
        core = self._core
        if not core.done.done():
            await asyncio.shield(core.done)
        if self._guard is not None:
            await self._guard.settled()
        if core.lost:
            raise ChildLost(core.pid)
