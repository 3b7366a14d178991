"""The child→parent channel: a stream of small typed frames.

One ``AF_UNIX`` stream socket per child carries, in order: the parent's
"go" byte (parent→child), then frames (child→parent), each
``type (1 byte) | length (8 bytes, big endian) | payload``:

``R``  the child finished its setup and is about to run ``fn``
``E``  a setup step failed: a JSON record ``{type, errno, msg, step, filename}``
``V``  ``fn``'s return value, pickled
``X``  ``fn``'s exception and formatted traceback, pickled
``T``  the value or exception could not be pickled: a JSON record
``S``  exec mode's pid-namespace init: the program's returncode (``!i``;
       ``-N`` = killed by signal N), sent just before the init exits

Setup records are JSON, never pickles, so a failing child cannot make the
parent run code while it is still being set up. ``V``/``X`` payloads are
unpickled: the trust boundary is the caller's (see ``Child.result``).
"""

from __future__ import annotations

import errno
import json
import os
import struct
from dataclasses import dataclass

GO = b"G"
HEADER = struct.Struct("!cQ")
FRAME_TYPES = frozenset(b"REVXTS")
# A setup record or text record is small; anything larger is a broken child.
MAX_RECORD = 1 << 20


class ProtocolError(Exception):
    """The child sent bytes that are not a valid frame stream."""


@dataclass(frozen=True, slots=True)
class Frame:
    kind: str
    payload: bytes


def encode(kind: bytes, payload: bytes = b"") -> bytes:
    return HEADER.pack(kind, len(payload)) + payload


RUNNING = encode(b"R")  # made once, in the parent: the child only writes it


def send(fd: int, kind: bytes, payload: bytes) -> None:
    """Blocking send of one frame (child side); large payloads are not copied."""
    if len(payload) < 65536:
        write_all(fd, HEADER.pack(kind, len(payload)) + payload)
    else:
        write_all(fd, HEADER.pack(kind, len(payload)))
        write_all(fd, payload)


def setup_record(exc: BaseException, step: str) -> bytes:
    """The ``E`` payload for a setup failure (built in the child)."""
    rec = {
        "type": type(exc).__name__,
        "errno": getattr(exc, "errno", None) or 0,
        "msg": getattr(exc, "strerror", None) or str(exc),
        "step": getattr(exc, "step", None) or step,
        "filename": getattr(exc, "filename", None),
    }
    if not isinstance(rec["filename"], str):
        rec["filename"] = None
    return json.dumps(rec).encode()


def text_record(kind: str, type_name: str, message: str, traceback: str = "") -> bytes:
    """The ``T`` payload: something that could not be pickled."""
    return json.dumps(
        {"what": kind, "type": type_name, "msg": message, "traceback": traceback}
    ).encode()


def decode_record(payload: bytes) -> dict[str, object]:
    try:
        rec = json.loads(payload)
    except ValueError as exc:
        raise ProtocolError(f"malformed record from the child: {exc}") from None
    if not isinstance(rec, dict):
        raise ProtocolError("malformed record from the child: not an object")
    return rec


class FrameReader:
    """Incremental decoder: feed bytes, take complete frames."""

    __slots__ = ("_buf", "_chunks", "_kind", "_need")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._kind = ""
        self._need = -1  # payload bytes still wanted for the current frame
        self._chunks: list[bytes] = []

    @property
    def pending(self) -> bool:
        """True while a frame has started but is incomplete."""
        return bool(self._buf) or self._need >= 0

    def feed(self, data: bytes) -> list[Frame]:
        out: list[Frame] = []
        view = memoryview(data)
        while view:
            if self._need < 0:
                take = HEADER.size - len(self._buf)
                self._buf += view[:take]
                view = view[take:]
                if len(self._buf) < HEADER.size:
                    break
                raw_kind, length = HEADER.unpack(self._buf)
                self._buf.clear()
                if raw_kind[0] not in FRAME_TYPES:
                    raise ProtocolError(f"unknown frame type {raw_kind!r} from the child")
                self._kind = raw_kind.decode()
                if self._kind in "ETRS" and length > MAX_RECORD:
                    raise ProtocolError(f"oversized {self._kind!r} record ({length} bytes)")
                self._need = length
                self._chunks = []
            take = min(self._need, len(view))
            if take:
                self._chunks.append(bytes(view[:take]))
                view = view[take:]
                self._need -= take
            if self._need == 0:
                out.append(Frame(self._kind, b"".join(self._chunks)))
                self._chunks = []
                self._need = -1
        return out


def write_all(fd: int, data: bytes) -> None:
    """Blocking write of all of ``data`` (child side)."""
    n = 0
    try:
        n = os.write(fd, data)
        if n == len(data):  # the common case: one write
            return
    except InterruptedError:  # pragma: no cover - PEP 475
        pass
    view = memoryview(data)[n:]
    while view:
        try:
            n = os.write(fd, view)
        except InterruptedError:  # pragma: no cover - PEP 475
            continue
        except BlockingIOError:  # pragma: no cover - the child's end is blocking
            continue
        view = view[n:]


def errno_of(rec: dict[str, object]) -> int:
    value = rec.get("errno")
    return value if isinstance(value, int) else errno.EIO
