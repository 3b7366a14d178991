"""The fn-mode child's body: run ``fn``, send its value or exception back.

Kept lean on purpose (asyncio, traceback and json are imported only when
needed): the spawner process imports this module, and every module it
holds makes each of its forks slower.
"""

from __future__ import annotations

import pickle
import types
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal

from . import _frames

_CoroutineType = types.CoroutineType
_send = _frames.send


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    return 1


Via = Literal["auto", "fork", "spawner"]
VIAS: tuple[str, ...] = ("auto", "fork", "spawner")

ResultFormat = Literal["pickle", "json", "bytes"]
RESULT_FORMATS: tuple[str, ...] = ("pickle", "json", "bytes")


def _encode_value(value: Any, fmt: str) -> bytes:
    if fmt == "pickle":
        return pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
    if fmt == "json":
        import json  # noqa: PLC0415 (lazy: see the module doc)

        return json.dumps(value).encode()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"result_format='bytes' needs bytes, not {type(value).__qualname__}")


def _fn_body(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    send_running: bool,
    fmt: str = "pickle",
) -> Callable[[int], int]:
    def body(sock: int) -> int:
        if send_running:
            _frames.write_all(sock, _frames.RUNNING)
        try:
            value = fn(*args, **kwargs)
            # Not inspect.isawaitable: its ABC check writes caches, and in a
            # fresh child every page written is a copy-on-write fault.
            if type(value) is _CoroutineType or hasattr(type(value), "__await__"):
                import asyncio  # noqa: PLC0415 (lazy: see the module doc)

                value = asyncio.run(_await(value))
        except SystemExit as exc:
            return _exit_code(exc.code)
        except BaseException as exc:
            import traceback  # noqa: PLC0415 (lazy: see the module doc)

            tb = "".join(traceback.format_exception(exc))
            if fmt != "pickle":  # text only: nothing of the child's is unpickled
                _send(
                    sock,
                    b"T",
                    _frames.text_record("exception", type(exc).__qualname__, str(exc), tb),
                )
                return 1
            try:
                payload = pickle.dumps((exc, tb), pickle.HIGHEST_PROTOCOL)
            except Exception as perr:
                _send(
                    sock,
                    b"T",
                    _frames.text_record(
                        "exception",
                        type(exc).__qualname__,
                        f"{exc} (and it could not be pickled: {perr})",
                        tb,
                    ),
                )
            else:
                _send(sock, b"X", payload)
            return 1
        try:
            payload = _encode_value(value, fmt)
        except Exception as perr:
            import traceback  # noqa: PLC0415 (lazy: see the module doc)

            _send(
                sock,
                b"T",
                _frames.text_record(
                    "value",
                    type(value).__qualname__,
                    f"fn returned a {type(value).__qualname__} that could not be "
                    f"{'pickled' if fmt == 'pickle' else 'encoded as ' + fmt}: {perr}",
                    "".join(traceback.format_exception(perr)),
                ),
            )
            return 1
        _send(sock, b"V", payload)
        return 0

    return body


async def _await(aw: Awaitable[Any]) -> Any:
    return await aw
