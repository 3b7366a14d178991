"""aiospaces.idmap: the parser (properties and every documented error),
the direct-vs-helpers decision, and writing into a real child."""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aiospaces import SpawnError
from aiospaces.compat import Container
from aiospaces.idmap import (
    MAX_ID,
    MAX_LINES,
    IdMap,
    IdRange,
    MapPlan,
    parse_map,
    plan_maps,
    write_maps,
    write_maps_async,
)

hsettings = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


# --- strategies ---------------------------------------------------------------


@st.composite
def id_maps(draw: st.DrawFn) -> IdMap:
    """Valid maps: disjoint inside and disjoint outside ranges, in any line order."""
    n = draw(st.integers(1, 12))
    counts = draw(st.lists(st.integers(1, 5000), min_size=n, max_size=n))
    gaps = st.lists(st.integers(0, 100_000_000), min_size=n, max_size=n)

    def layout(order: list[int], gap: list[int]) -> dict[int, int]:
        """Start of each block when blocks are laid out in ``order``."""
        start, pos = {}, 0
        for k, g in zip(order, gap, strict=True):
            pos += g
            start[k] = pos
            pos += counts[k]
        return start

    inside = layout(list(range(n)), draw(gaps))
    outside = layout(draw(st.permutations(range(n))), draw(gaps))
    ranges = [IdRange(inside[k], outside[k], counts[k]) for k in range(n)]
    return IdMap(tuple(draw(st.permutations(ranges))))


# --- round trips ----------------------------------------------------------------


@hsettings
@given(id_maps())
def test_valid_maps_round_trip(m: IdMap) -> None:
    text = m.render().decode()
    assert parse_map(text) == m
    assert parse_map(text.replace("\n", ",").rstrip(",")) == m
    assert parse_map(text.splitlines()) == m
    assert parse_map(m) == m
    assert parse_map(text, field="gid_map").render() == m.render()


@hsettings
@given(st.lists(st.integers(0, MAX_ID), min_size=1, max_size=MAX_LINES, unique=True))
def test_bare_id_lists_number_from_zero(ids: list[int]) -> None:
    m = parse_map(ids)
    assert m is not None
    assert [(r.inside, r.outside, r.count) for r in m.ranges] == [
        (i, x, 1) for i, x in enumerate(ids)
    ]
    assert parse_map(",".join(map(str, ids))) == m
    assert parse_map([str(x) for x in ids]) == m


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (1000, b"0 1000 1\n"),
        ("1000", b"0 1000 1\n"),
        ("0 1000 1", b"0 1000 1\n"),
        ("0 1000 1,1 1001 1", b"0 1000 1\n1 1001 1\n"),
        ("0 1000 1\n1 1001 1\n", b"0 1000 1\n1 1001 1\n"),
        ("1000,1001", b"0 1000 1\n1 1001 1\n"),
        ([1000, 1001], b"0 1000 1\n1 1001 1\n"),
        (("1000", "1001"), b"0 1000 1\n1 1001 1\n"),
        (["0 1000 1", "1 100000 65536"], b"0 1000 1\n1 100000 65536\n"),
        (range(7, 9), b"0 7 1\n1 8 1\n"),
        ("  0   00042  3  ", b"0 42 3\n"),
        (f"0 {MAX_ID} 1", f"0 {MAX_ID} 1\n".encode()),
    ],
)
def test_seed_formats(spec: Any, expected: bytes) -> None:
    m = parse_map(spec)
    assert m is not None
    assert m.render() == expected


@pytest.mark.parametrize("spec", [None, False, "", "  \n ", [], ()])
def test_no_map(spec: Any) -> None:
    assert parse_map(spec) is None


def test_true_maps_own_id() -> None:
    assert parse_map(True, own_id=1234) == IdMap((IdRange(0, 1234, 1),))
    assert parse_map(True, field="uid_map") == IdMap((IdRange(0, os.getuid(), 1),))
    assert parse_map(True, field="gid_map") == IdMap((IdRange(0, os.getgid(), 1),))


def test_seed_string_bug_not_copied() -> None:
    # pyspaces on Python 3 iterated "0 1000 1" char by char into garbage.
    m = parse_map("0 1000 1")
    assert m is not None and m.ranges == (IdRange(0, 1000, 1),)


# --- errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "exc", "words"),
    [
        ("0 1000", ValueError, "malformed"),
        ("0 1000 1 5", ValueError, "malformed"),
        ("0 x 1", ValueError, "not a non-negative decimal"),
        ("0 1e3 1", ValueError, "not a non-negative decimal"),
        ("0 \u0661\u0660 1", ValueError, "not a non-negative decimal"),  # Arabic-Indic digits
        ("0 -5 1", ValueError, "not a non-negative decimal"),
        (-1, ValueError, "negative"),
        ([5, -1], ValueError, "negative"),
        ("0 1000 0", ValueError, "count must be at least 1"),
        (2**32 - 1, ValueError, "beyond"),
        (2**40, ValueError, "beyond"),
        (f"0 {MAX_ID} 2", ValueError, "beyond"),
        (f"{MAX_ID} 0 2", ValueError, "beyond"),
        ("0 1000 10,5 2000 1", ValueError, "inside ranges overlap"),
        ("0 1000 10,20 1009 1", ValueError, "outside ranges overlap"),
        ("1000,1000", ValueError, "outside ranges overlap"),
        (list(range(MAX_LINES + 1)), ValueError, "at most 340"),
        (",".join(map(str, range(MAX_LINES + 1))), ValueError, "at most 340"),
        ("0 1 1,,1 2 1", ValueError, "malformed"),
        ("0 1000 1,1001", ValueError, "mixes"),
        (1.5, TypeError, "float"),
        (b"0 1000 1", TypeError, "bytes"),
        ({"0": 1000}, TypeError, "dict"),
        ({1000}, TypeError, "set"),
        ([1.0], TypeError, "float"),
        ([True], TypeError, "bool"),
        ([[1000]], TypeError, "list"),
    ],
)
@pytest.mark.parametrize("field", ["uid_map", "gid_map"])
def test_documented_errors(spec: Any, exc: type[Exception], words: str, field: str) -> None:
    with pytest.raises(exc) as info:
        parse_map(spec, field=field)
    assert str(info.value).startswith(f"{field}: ")
    assert words in str(info.value)


def test_map_larger_than_a_page_is_refused() -> None:
    # 340 lines of big ids render to ~8 KiB; the kernel takes < PAGE_SIZE per write.
    big = [f"{i * 1000} {4_000_000_000 + i * 1000} 1000" for i in range(MAX_LINES)]
    if len("".join(b + "\n" for b in big)) < os.sysconf("SC_PAGESIZE"):
        pytest.skip("page size larger than the biggest map")
    with pytest.raises(ValueError, match="per write"):
        parse_map(big)


def test_idmap_and_idrange_validate_themselves() -> None:
    with pytest.raises(ValueError, match="at least one"):
        IdMap(())
    with pytest.raises(TypeError):
        IdMap([IdRange(0, 1, 1)])  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        IdRange(0, 1.0, 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="negative"):
        IdRange(-1, 0, 1)


_junk = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.binary(),
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.tuples(inner)
        | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=12,
)
_map_text = st.text(alphabet="0123456789 ,\n-+x\t", max_size=60)


@hsettings
@given(st.one_of(_junk, _map_text, st.lists(_map_text, max_size=5)))
def test_arbitrary_input_raises_only_value_or_type_error(spec: Any) -> None:
    try:
        m = parse_map(spec)
    except (ValueError, TypeError):
        return
    assert m is None or isinstance(m, IdMap)
    if m is not None:
        assert parse_map(m.render().decode()) == m


@hsettings
@given(st.one_of(st.text(), _map_text))
def test_arbitrary_text_raises_only_value_error(text: str) -> None:
    with contextlib.suppress(ValueError):
        parse_map(text)


# --- plan_maps ---------------------------------------------------------------------


def test_plan_nothing_to_write() -> None:
    assert plan_maps(None, None) is None
    assert plan_maps("", [], map_zero=False) is None


def test_plan_validates_and_names_the_field() -> None:
    with pytest.raises(ValueError, match=r"^uid_map: "):
        plan_maps("0 1000", None)
    with pytest.raises(ValueError, match=r"^gid_map: "):
        plan_maps(None, -3)
    with pytest.raises(TypeError, match=r"^gid_map: "):
        plan_maps(True, 2.5)
    with pytest.raises(TypeError, match="map_zero"):
        plan_maps(None, None, map_zero=1)  # type: ignore[arg-type]


def test_plan_map_zero_fills_only_missing_maps() -> None:
    plan = plan_maps(True, None, map_zero=True)
    assert plan is not None
    assert plan.uid_map == IdMap((IdRange(0, os.getuid(), 1),))
    assert plan.gid_map == IdMap((IdRange(0, os.getgid(), 1),))


@pytest.mark.root
def test_plan_privileged_writes_anything_directly() -> None:
    plan = plan_maps("0 100000 65536", "0 100000 65536,65536 0 1")
    assert plan == MapPlan(
        parse_map("0 100000 65536"),
        parse_map("0 100000 65536,65536 0 1", field="gid_map"),
        deny_setgroups=False,
        use_helpers=False,
    )


@pytest.mark.unprivileged
def test_plan_unprivileged_own_id_is_direct_with_setgroups_deny() -> None:
    plan = plan_maps(True, True)
    assert plan is not None
    assert (plan.deny_setgroups, plan.use_helpers) == (True, False)
    plan = plan_maps(os.geteuid(), None)
    assert plan is not None
    assert (plan.deny_setgroups, plan.use_helpers) == (False, False)


def _has_subids() -> bool:
    import pwd

    name = pwd.getpwuid(os.geteuid()).pw_name
    try:
        with open("/etc/subuid") as f:
            return any(line.split(":")[0] in (name, str(os.geteuid())) for line in f)
    except OSError:
        return False


@pytest.mark.unprivileged
@pytest.mark.parametrize(
    "spec",
    [lambda u: f"0 {u} 2", lambda u: f"0 {u} 1,1 {u + 1} 1", lambda u: u + 1, lambda u: [u, 0]],
)
def test_plan_unprivileged_other_ids_explains(spec: Any) -> None:
    # Ids outside any subordinate range (own+1, 0): refused even with newuidmap.
    uid = os.geteuid()
    with pytest.raises(PermissionError) as info:
        plan_maps(spec(uid), None)
    text = str(info.value)
    assert info.value.errno == errno.EPERM
    assert "uidmap" in text and "/etc/subuid" in text and "usermod --add-subuids" in text
    assert "uid_map" in text  # which map and which ids
    with pytest.raises(PermissionError, match="gid_map"):
        plan_maps(None, spec(os.getegid()))


@pytest.mark.unprivileged
@pytest.mark.newuidmap
def test_plan_unprivileged_uses_helpers_for_subordinate_ids() -> None:
    import pwd

    name = pwd.getpwuid(os.geteuid()).pw_name
    start = count = None
    with open("/etc/subuid") as f:
        for line in f:
            parts = line.strip().split(":")
            if parts[0] in (name, str(os.geteuid())):
                start, count = int(parts[1]), int(parts[2])
    if start is None or count is None:
        pytest.skip("no /etc/subuid range for this user")
    plan = plan_maps(f"0 {os.geteuid()} 1,1 {start} {min(count, 1000)}", None)
    assert plan is not None and plan.use_helpers and not plan.deny_setgroups


def _subrange(path: str) -> tuple[int, int]:
    import pwd

    keys = (pwd.getpwuid(os.geteuid()).pw_name, str(os.geteuid()))
    with open(path) as f:
        for line in f:
            parts = line.strip().split(":")
            if parts[0] in keys:
                return int(parts[1]), int(parts[2])
    pytest.skip(f"no {path} range for this user")


@pytest.mark.unprivileged
@pytest.mark.newuidmap
@pytest.mark.parametrize("asynchronous", [False, True])
def test_helpers_write_subordinate_maps_into_a_real_child(asynchronous: bool) -> None:
    import asyncio

    (us, un), (gs, gn) = _subrange("/etc/subuid"), _subrange("/etc/subgid")
    uid_map = f"0 {os.geteuid()} 1,1 {us} {min(un, 1000)}"
    gid_map = f"0 {os.getegid()} 1,1 {gs} {min(gn, 1000)}"
    plan = plan_maps(uid_map, gid_map)
    assert plan is not None and plan.use_helpers
    c, w = _waiting_child()
    try:
        assert c.pid is not None
        if asynchronous:
            asyncio.run(write_maps_async(c.pid, plan))
        else:
            write_maps(c.pid, plan)
        assert _read(f"/proc/{c.pid}/uid_map").split() == uid_map.replace(",", " ").split()
        assert _read(f"/proc/{c.pid}/gid_map").split() == gid_map.replace(",", " ").split()
        # maps are written once: the helper fails and its message travels
        with pytest.raises(SpawnError) as info:
            write_maps(c.pid, plan)
        assert info.value.step == "newuidmap" and info.value.errno == errno.EPERM
        assert "newuidmap exited with status" in str(info.value)
    finally:
        _finish(c, w)


# --- writing into a real child ------------------------------------------------------


def _read(path: str) -> str:
    return Path(path).read_text()


def _own(field: str) -> IdMap:
    own = os.geteuid() if field == "uid" else os.getegid()
    return IdMap((IdRange(0, own, 1),))


def _waiting_child() -> tuple[Container, int]:
    """A child in a new user namespace without maps, blocked on a pipe."""
    r, w = os.pipe()

    def wait() -> None:
        os.close(w)
        os.read(r, 1)

    c = Container(target=wait, newuser=True)
    c.start()
    os.close(r)
    return c, w


def _finish(c: Container, w: int) -> None:
    os.close(w)
    c.join(10)
    c.close()


@pytest.mark.userns
def test_write_maps_order_and_kernel_refusals() -> None:
    c, w = _waiting_child()
    try:
        assert c.pid is not None
        privileged = os.geteuid() == 0
        plan = MapPlan(_own("uid"), _own("gid"), deny_setgroups=False, use_helpers=False)
        if privileged:
            write_maps(c.pid, plan)
            with open(f"/proc/{c.pid}/setgroups") as f:
                assert f.read().strip() == "allow"
        else:
            # uid_map is written first; gid_map without setgroups=deny is refused.
            with pytest.raises(SpawnError) as info:
                write_maps(c.pid, plan)
            assert (info.value.step, info.value.errno) == ("gid_map", errno.EPERM)
            assert info.value.filename == f"/proc/{c.pid}/gid_map"
        with open(f"/proc/{c.pid}/uid_map") as f:
            assert f.read().split() == ["0", str(os.geteuid()), "1"]
        # A map file takes one write in a namespace's life.
        with pytest.raises(SpawnError) as info:
            write_maps(c.pid, MapPlan(_own("uid"), None, False, False))
        assert (info.value.step, info.value.errno) == ("uid_map", errno.EPERM)
        assert info.value.filename == f"/proc/{c.pid}/uid_map"
    finally:
        _finish(c, w)


@pytest.mark.userns
async def test_write_maps_async_unprivileged_style() -> None:
    c, w = _waiting_child()
    try:
        assert c.pid is not None
        plan = MapPlan(_own("uid"), _own("gid"), deny_setgroups=True, use_helpers=False)
        await write_maps_async(c.pid, plan)
        assert _read(f"/proc/{c.pid}/setgroups").strip() == "deny"
        assert _read(f"/proc/{c.pid}/gid_map").split() == ["0", str(os.getegid()), "1"]
    finally:
        _finish(c, w)


def test_write_maps_missing_proc_names_the_file(tmp_path: Any) -> None:
    plan = MapPlan(None, _own("gid"), deny_setgroups=True, use_helpers=False)
    with pytest.raises(SpawnError) as info:
        write_maps(4242, plan, proc=str(tmp_path))
    assert isinstance(info.value, OSError)
    assert (info.value.step, info.value.errno) == ("setgroups", errno.ENOENT)
    assert info.value.filename == f"{tmp_path}/4242/setgroups"
