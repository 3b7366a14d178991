"""A child that lies: garbage, truncated or oversized frames, floods, and a
pickle crafted to run code in the parent. The parent must report an error,
never hang, never run the child's code (in the json/bytes result modes)."""

from __future__ import annotations

import contextlib
import os
import stat
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aiospaces import ChildError, ChildExited, spawn

HEADER = struct.Struct("!cQ")


def _channel_fd() -> int:
    """The child's end of its frame channel: the one socket among its fds."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            if stat.S_ISSOCK(os.fstat(fd).st_mode):
                return fd
        except OSError:
            continue
    raise RuntimeError("no channel")


def _write_and_exit(data: bytes, code: int = 0) -> None:
    fd = _channel_fd()
    os.write(fd, data)
    os._exit(code)


class Evil:
    """Unpickling this runs code: the parent must never do it in json mode."""

    def __reduce__(self) -> tuple[object, ...]:
        return (os.system, ("touch /tmp/aiospaces-pwned",))


async def test_garbage_frame_type_is_protocol_error() -> None:
    child = await spawn(_write_and_exit, args=(b"Zgarbage-garbage",))
    with pytest.raises(ChildError, match="protocol"):
        await child.result()


async def test_truncated_value_frame() -> None:
    child = await spawn(_write_and_exit, args=(HEADER.pack(b"V", 1 << 30) + b"abc",))
    with pytest.raises(ChildError, match="truncated"):
        await child.result()


async def test_oversized_record_is_refused_without_reading_it() -> None:
    child = await spawn(_write_and_exit, args=(HEADER.pack(b"E", 1 << 40),))
    with pytest.raises(ChildError, match="oversized"):
        await child.result()


async def test_malformed_text_record() -> None:
    child = await spawn(_write_and_exit, args=(HEADER.pack(b"T", 5) + b"\xff{{{{",))
    with pytest.raises(ChildError, match="malformed"):
        await child.result()


async def test_closed_channel_early_then_exit_is_no_result() -> None:
    def close_and_exit() -> None:
        os.close(_channel_fd())
        os._exit(3)

    child = await spawn(close_and_exit)
    with pytest.raises(ChildExited) as info:
        await child.result()
    assert info.value.returncode == 3


async def test_flooding_stdout_does_not_block_the_parent() -> None:
    r, w = os.pipe()
    os.set_blocking(r, False)
    try:

        def flood() -> int:
            try:
                for _ in range(10_000):
                    os.write(w, b"x" * 65536)  # nobody reads: it blocks when full
            except BlockingIOError:
                pass
            return 1

        # The child floods a pipe nobody reads; the parent stays responsive
        # and ends it.
        async with await spawn(flood, pass_fds=[w]) as child:
            pass
        assert child.returncode == -9
    finally:
        os.close(r)
        os.close(w)


async def test_crafted_pickle_is_not_run_in_json_mode() -> None:
    marker = "/tmp/aiospaces-pwned"
    if os.path.exists(marker):  # noqa: ASYNC240
        os.unlink(marker)
    import pickle

    payload = pickle.dumps(Evil())
    child = await spawn(
        _write_and_exit, args=(HEADER.pack(b"X", len(payload)) + payload,), result_format="json"
    )
    with pytest.raises(ChildError, match="'X' frame in json mode"):
        await child.result()
    child = await spawn(
        _write_and_exit, args=(HEADER.pack(b"V", len(payload)) + payload,), result_format="json"
    )
    with pytest.raises(ChildError, match="not valid JSON"):
        await child.result()
    assert not os.path.exists(marker)  # noqa: ASYNC240


async def test_json_and_bytes_modes_carry_values_and_errors() -> None:
    child = await spawn(lambda: {"a": [1, 2, None]}, result_format="json")
    assert await child.result() == {"a": [1, 2, None]}
    child = await spawn(lambda: b"\x00raw", result_format="bytes")
    assert await child.result() == b"\x00raw"
    child = await spawn(object, result_format="json")
    with pytest.raises(ChildError, match="could not be encoded as json"):
        await child.result()

    def boom() -> None:
        raise KeyError("nope")

    child = await spawn(boom, result_format="json")
    with pytest.raises(ChildError, match="KeyError") as info:
        await child.result()
    assert "boom" in (info.value.remote_traceback or "")


async def test_bad_result_format_is_refused() -> None:
    with pytest.raises(ValueError, match="result_format"):
        await spawn(int, result_format="yaml")  # type: ignore[arg-type]


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.binary(max_size=64))
def test_any_bytes_from_the_child_give_a_clear_outcome(data: bytes) -> None:
    import asyncio

    async def main() -> None:
        child = await spawn(_write_and_exit, args=(data,), result_format="json")
        with contextlib.suppress(ChildError, ChildExited):
            await asyncio.wait_for(child.result(), 10)

    asyncio.run(main())
