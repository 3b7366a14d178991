"""Watching a child on the running loop: its pidfd and its frame channel.

Public loop APIs only (``add_reader``/``remove_reader``), so the default
asyncio loop and uvloop run the same code. No threads, no SIGCHLD handler,
no ``waitpid(-1)``: the pidfd becomes readable when the process exits and
``waitid(P_PIDFD, WNOHANG)`` reaps exactly that child.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable

from . import _frames
from ._linux import waitid_pidfd

# Bytes read per callback before yielding to other ready callbacks: large
# results keep flowing without starving the loop.
READ_CHUNK = 1 << 18
READS_PER_CALLBACK = 16


class ExitWatch:
    """Reap one child through its pidfd, on the loop, once.

    ``on_exit(returncode)`` is called once with the status, or with ``None``
    when someone else reaped the child (:class:`~aiospaces.ChildLost`).
    Closing follows a fixed order: unregister, close the pidfd, then report.
    """

    __slots__ = ("_loop", "_on_exit", "_watching", "pid", "pidfd")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_exit: Callable[[int | None], None],
    ) -> None:
        # Made before clone, armed after: every object the parent builds
        # while the fresh child shares its pages costs a copy-on-write fault.
        self._loop = loop
        self.pid = 0
        self.pidfd = -1
        self._watching = False
        self._on_exit = on_exit

    def arm(self, pid: int, pidfd: int) -> None:
        """Take ownership of ``pidfd``; :meth:`watch` starts the watching."""
        self.pid = pid
        self.pidfd = pidfd

    def watch(self) -> None:
        """Register the pidfd with the loop (idempotent)."""
        if self.pidfd >= 0 and not self._watching:
            self._watching = True
            self._loop.add_reader(self.pidfd, self._ready)

    def _ready(self) -> None:
        try:
            rc = waitid_pidfd(self.pidfd)
        except ChildProcessError:
            self._finish(None)
            return
        if rc is not None:
            self._finish(rc)

    def _finish(self, rc: int | None) -> None:
        fd, self.pidfd = self.pidfd, -1
        if fd < 0:
            return
        if self._watching:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(fd)
        os.close(fd)
        self._on_exit(rc)

    def reap_now(self) -> None:
        """Blocking reap (after SIGKILL), for when no loop can wait for it."""
        if self.pidfd < 0:
            return
        try:
            rc = waitid_pidfd(self.pidfd, block=True)
        except ChildProcessError:
            rc = None
        self._finish(rc)


class Channel:
    """The parent's end of the frame socket, read on the loop.

    ``on_frame(frame)`` is called for each complete frame, ``on_eof()`` once
    when every holder of the child's end has closed it (or the stream is
    broken: then ``on_eof`` sees ``error`` set).
    """

    __slots__ = ("_loop", "_on_eof", "_on_frame", "_reader", "error", "fd")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        fd: int,
        on_frame: Callable[[_frames.Frame], None],
        on_eof: Callable[[], None],
    ) -> None:
        self._loop = loop
        self.fd = fd
        self._on_frame = on_frame
        self._on_eof = on_eof
        self._reader = _frames.FrameReader()
        self.error: Exception | None = None
        os.set_blocking(fd, False)
        loop.add_reader(fd, self._ready)

    @property
    def closed(self) -> bool:
        return self.fd < 0

    @property
    def partial(self) -> bool:
        """A frame was started but not finished."""
        return self._reader.pending

    def send(self, data: bytes) -> bool:
        """Non-blocking send of a tiny message; False if the child is gone."""
        if self.fd < 0:
            return False
        try:
            return os.write(self.fd, data) == len(data)
        except (BrokenPipeError, ConnectionResetError):
            return False

    def _ready(self) -> None:
        self.drain(READS_PER_CALLBACK)

    def drain(self, max_reads: int = 1 << 30) -> None:
        """Read what is there now (up to ``max_reads`` chunks)."""
        for _ in range(max_reads):
            if self.fd < 0:
                return
            try:
                data = os.read(self.fd, READ_CHUNK)
            except BlockingIOError:
                return
            except ConnectionResetError:
                data = b""
            if not data:
                self.close()
                self._on_eof()
                return
            try:
                frames = self._reader.feed(data)
            except _frames.ProtocolError as exc:
                self.error = exc
                self.close()
                self._on_eof()
                return
            for frame in frames:
                self._on_frame(frame)

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd < 0:
            return
        with contextlib.suppress(Exception):
            self._loop.remove_reader(fd)
        os.close(fd)
