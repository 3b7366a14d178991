"""The supervisor's event types and the bounded stream that delivers them.

Every event is a frozen dataclass carrying the child's ``name`` and two
timestamps taken when it happened: ``monotonic`` (``time.monotonic()``, for
measuring intervals such as backoff delays) and ``wall`` (``time.time()``,
for logs)::

    Event
    ├── Started      a child (first run or restart) is running: pid, attempt
    ├── Exited       it ended: returncode (None if it could not be started: error)
    ├── Restarting   a restart is scheduled: attempt, delay
    ├── GaveUp       too many restarts within the period: no more restarts
    └── Stopped      it was stopped by ``stop()`` or by leaving the supervisor

An :class:`EventStream` is one consumer's view: each consumer has its own
bounded buffer; when a slow consumer's buffer is full the *oldest* event is
dropped and counted in :attr:`EventStream.dropped` (a supervisor never waits
for its consumers). With no consumer, events are only kept in the
supervisor's bounded history.
"""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass, field

__all__ = [
    "Event",
    "EventStream",
    "Exited",
    "GaveUp",
    "Restarting",
    "Started",
    "Stopped",
]


def _now() -> float:
    return time.monotonic()


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Base class: ``name`` of the child, ``monotonic`` and ``wall`` timestamps."""

    name: str
    monotonic: float = field(default_factory=_now, compare=False)
    wall: float = field(default_factory=time.time, compare=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class Started(Event):
    """The child runs: ``pid`` in our namespace, ``attempt`` 0 for the first run."""

    pid: int
    attempt: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Exited(Event):
    """The child ended with ``returncode`` (``-N``: killed by signal N).

    ``returncode`` is ``None`` when a restart could not even be started
    (``error`` holds why) or when something else reaped the child.
    """

    pid: int | None
    returncode: int | None
    error: BaseException | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class Restarting(Event):
    """A restart is scheduled after ``delay`` seconds; ``attempt`` counts the
    restarts within the current intensity period (1 for the first)."""

    attempt: int
    delay: float


@dataclass(frozen=True, slots=True, kw_only=True)
class GaveUp(Event):
    """More than ``max_restarts`` failures within ``within`` seconds: the child
    is not restarted again. ``returncode`` is its last one."""

    restarts: int
    within: float
    returncode: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Stopped(Event):
    """The child was stopped on request; ``returncode`` is its last one
    (``None`` if it was waiting to be restarted)."""

    returncode: int | None


class EventStream:
    """An async iterator over a supervisor's events for one consumer.

    The stream ends (``StopAsyncIteration``) once the supervisor has closed
    and every buffered event has been read. ``dropped`` counts events lost
    because this consumer fell more than ``maxlen`` events behind.

    Cancellation: cancelling ``__anext__`` loses no event.
    """

    __slots__ = ("_buf", "_closed", "_loop", "_unsubscribe", "_waiter", "dropped")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        maxlen: int,
        history: collections.abc.Iterable[Event] = (),
    ) -> None:
        self._loop = loop
        self._buf: collections.deque[Event] = collections.deque(history, maxlen=maxlen)
        self._closed = False
        self._waiter: asyncio.Future[None] | None = None
        self._unsubscribe: collections.abc.Callable[[EventStream], None] | None = None
        self.dropped = 0

    def _push(self, event: Event) -> None:
        if len(self._buf) == self._buf.maxlen:
            self.dropped += 1
        self._buf.append(event)
        self._wake()

    def _close(self) -> None:
        self._closed = True
        self._wake()

    def _wake(self) -> None:
        w, self._waiter = self._waiter, None
        if w is not None and not w.done():
            w.set_result(None)

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        while not self._buf:
            if self._closed:
                raise StopAsyncIteration
            if self._waiter is None or self._waiter.done():
                self._waiter = self._loop.create_future()
            await self._waiter
        return self._buf.popleft()

    def aclose_nowait(self) -> None:
        """Stop receiving events (the stream then ends after what it holds)."""
        if self._unsubscribe is not None:
            self._unsubscribe(self)
            self._unsubscribe = None
        self._close()

    async def aclose(self) -> None:
        """Stop receiving events; for ``contextlib.aclosing``."""
        self.aclose_nowait()
