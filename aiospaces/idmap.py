"""uid/gid maps of a user namespace: parse, validate, decide how, write.

Every format the seed (``pyspaces``) accepted is parsed into an :class:`IdMap`
of :class:`IdRange` records and validated against the kernel's rules before
any process exists; :func:`plan_maps` then decides whether this caller can
write the maps itself or needs the setuid helpers ``newuidmap``/``newgidmap``;
:func:`write_maps` / :func:`write_maps_async` apply the plan to a child that
waits for its "go".

>>> parse_map("0 1000 1,1 1001 1").render()
b'0 1000 1\\n1 1001 1\\n'
>>> parse_map([1000, 1001]) == parse_map("1000,1001")
True

Kernel rules (``kernel/user_namespace.c``, ``map_write``): each map file
takes one ``write()`` of less than a page, at most 340 lines since Linux
4.15; ids are u32 with ``4294967295`` reserved as "no id"; neither the inside
nor the outside ranges may overlap; without ``CAP_SETUID``/``CAP_SETGID`` a
process may only map its own effective id, one line of length 1, and for
``gid_map`` only after writing ``deny`` to ``setgroups``.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import os
import pwd
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

from ._errors import SpawnError

__all__ = [
    "MAX_ID",
    "MAX_LINES",
    "IdMap",
    "IdRange",
    "MapPlan",
    "MapSpec",
    "parse_map",
    "plan_maps",
    "write_maps",
    "write_maps_async",
]

MAX_ID: Final = 2**32 - 2
"""The largest id a map may cover: ``(u32)-1`` means "no id" to the kernel."""
MAX_LINES: Final = 340
"""Lines per map file since Linux 4.15 (5 before)."""

_CAP_SETGID: Final = 6
_CAP_SETUID: Final = 7
_NUMBER = re.compile(r"[0-9]{1,20}\Z")  # ASCII digits only: str.isdigit() takes "²"

Field: TypeAlias = Literal["uid_map", "gid_map"]


@dataclass(frozen=True, slots=True)
class IdRange:
    """One line of a map: ``count`` ids from ``inside`` map to ``outside``.

    >>> IdRange(0, 1000, 1)
    IdRange(inside=0, outside=1000, count=1)
    """

    inside: int
    outside: int
    count: int

    def __post_init__(self) -> None:
        for name in ("inside", "outside", "count"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, not {type(value).__name__}")
        if self.inside < 0 or self.outside < 0:
            raise ValueError(f"negative id in {self.line()!r}")
        if self.count < 1:
            raise ValueError(f"count must be at least 1 in {self.line()!r}")
        if self.inside + self.count - 1 > MAX_ID or self.outside + self.count - 1 > MAX_ID:
            raise ValueError(f"ids beyond {MAX_ID} in {self.line()!r}")

    def line(self) -> str:
        """The map-file line, without the newline: ``"0 1000 1"``."""
        return f"{self.inside} {self.outside} {self.count}"


@dataclass(frozen=True, slots=True)
class IdMap:
    """A validated uid or gid map: non-empty, no overlaps, at most 340 lines.

    >>> IdMap((IdRange(0, 1000, 1), IdRange(1, 100000, 65536))).render()
    b'0 1000 1\\n1 100000 65536\\n'
    """

    ranges: tuple[IdRange, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.ranges, tuple):
            raise TypeError(f"ranges must be a tuple of IdRange, not {type(self.ranges).__name__}")
        if not self.ranges:
            raise ValueError("a map needs at least one range")
        for r in self.ranges:
            if not isinstance(r, IdRange):
                raise TypeError(f"ranges must hold IdRange, not {type(r).__name__}")
        if len(self.ranges) > MAX_LINES:
            raise ValueError(f"{len(self.ranges)} lines: the kernel takes at most {MAX_LINES}")
        _check_overlap(self.ranges, "inside")
        _check_overlap(self.ranges, "outside")
        size = len(self.render())
        page = os.sysconf("SC_PAGESIZE")
        if size >= page:
            raise ValueError(
                f"the map is {size} bytes: the kernel takes less than {page} per write"
            )

    def render(self) -> bytes:
        """The bytes written to ``/proc/PID/uid_map`` in one ``write()``."""
        return "".join(r.line() + "\n" for r in self.ranges).encode("ascii")

    def covers(self, outside_id: int) -> bool:
        """True if ``outside_id`` is mapped (to some inside id)."""
        return any(r.outside <= outside_id < r.outside + r.count for r in self.ranges)

    def to_inside(self, outside_id: int) -> int | None:
        """The inside id of ``outside_id``, or None if it is not mapped.

        >>> parse_map("0 1000 10").to_inside(1003)
        3
        """
        for r in self.ranges:
            if r.outside <= outside_id < r.outside + r.count:
                return r.inside + outside_id - r.outside
        return None


def _check_overlap(ranges: tuple[IdRange, ...], side: Literal["inside", "outside"]) -> None:
    spans = sorted(ranges, key=lambda r: int(getattr(r, side)))
    for a, b in itertools.pairwise(spans):
        if getattr(b, side) < getattr(a, side) + a.count:
            raise ValueError(f"{side} ranges overlap: {a.line()!r} and {b.line()!r}")


MapSpec: TypeAlias = bool | int | str | Sequence[int | str] | IdMap | None
"""What ``uid_map=``/``gid_map=`` accept (the seed's formats, plus :class:`IdMap`)."""


def parse_map(spec: MapSpec, *, field: str = "uid_map", own_id: int | None = None) -> IdMap | None:
    """Parse any accepted map format into a validated :class:`IdMap`.

    ``None``, ``False``, ``""`` and an empty sequence mean "no map" (None).
    ``True`` maps the caller's own id (``own_id``, by default ``os.getuid()``
    for ``uid_map`` and ``os.getgid()`` otherwise) to 0; an int ``n`` maps
    ``n`` to 0; text holds ``"inside outside count"`` lines separated by
    commas or newlines, or bare ids (``"1000,1001"``) numbered from 0; a
    sequence holds bare ids (ints or digit strings, numbered from 0) or
    ``"inside outside count"`` strings.

    Raises ``TypeError`` for a wrong type and ``ValueError`` for a bad map,
    both starting with ``field``.

    >>> parse_map(True, own_id=1000).render()
    b'0 1000 1\\n'
    >>> parse_map(["0 1000 1", "1 100000 10"]).render()
    b'0 1000 1\\n1 100000 10\\n'
    >>> parse_map("0 1000 0")
    Traceback (most recent call last):
    ...
    ValueError: uid_map: count must be at least 1 in '0 1000 0'
    """
    try:
        return _parse(spec, field, own_id)
    except (ValueError, TypeError) as exc:
        msg = str(exc)
        if msg.startswith(f"{field}:"):
            raise
        raise type(exc)(f"{field}: {msg}") from None


def _parse(spec: object, field: str, own_id: int | None) -> IdMap | None:
    if spec is None or spec is False:
        return None
    if spec is True:
        if own_id is None:
            own_id = os.getuid() if field == "uid_map" else os.getgid()
        return IdMap((IdRange(0, own_id, 1),))
    if isinstance(spec, IdMap):
        # Re-validate: an IdMap built with object.__setattr__ tricks or pickled
        # from elsewhere must still satisfy the kernel's rules.
        return IdMap(tuple(spec.ranges))
    if isinstance(spec, int):
        return IdMap((IdRange(0, _as_id(spec), 1),))
    if isinstance(spec, str):
        text = spec.strip()
        if not text:
            return None
        if len(text) > 1 << 16:
            raise ValueError(f"map text is too long ({len(text)} characters)")
        return _from_entries(re.split(r"[,\n]", text))
    if isinstance(spec, (bytes, bytearray, memoryview)) or not isinstance(spec, Sequence):
        raise TypeError(
            f"expected bool, int, str, a list of ids or of 'inside outside count' strings, "
            f"or an IdMap; got {type(spec).__name__}"
        )
    if not spec:
        return None
    if len(spec) > MAX_LINES:
        raise ValueError(f"{len(spec)} lines: the kernel takes at most {MAX_LINES}")
    entries: list[str | int] = []
    for item in spec:
        if isinstance(item, bool) or not isinstance(item, (int, str)):
            raise TypeError(
                f"list items must be ids (int) or 'inside outside count' strings, "
                f"not {type(item).__name__}"
            )
        entries.append(item)
    return _from_entries(entries)


def _from_entries(entries: Sequence[str | int]) -> IdMap:
    """Entries are all bare ids (numbered from 0) or all ``a b c`` triples."""
    if len(entries) > MAX_LINES:
        raise ValueError(f"{len(entries)} lines: the kernel takes at most {MAX_LINES}")
    bare: list[int] = []
    triples: list[IdRange] = []
    for entry in entries:
        if isinstance(entry, int):
            bare.append(_as_id(entry))
            continue
        words = entry.split()
        if len(words) == 1:
            bare.append(_as_id(_number(words[0], entry)))
        elif len(words) == 3:
            a, b, c = (_number(w, entry) for w in words)
            triples.append(IdRange(a, b, c))
        else:
            raise ValueError(
                f"malformed entry {entry!r}: expected 'inside outside count' or a bare id"
            )
    if bare and triples:
        raise ValueError("mixes bare ids and 'inside outside count' entries")
    if bare:
        return IdMap(tuple(IdRange(i, outside, 1) for i, outside in enumerate(bare)))
    return IdMap(tuple(triples))


def _number(word: str, entry: str) -> int:
    if not _NUMBER.match(word):
        raise ValueError(f"{word!r} in {entry!r} is not a non-negative decimal id")
    return int(word)


def _as_id(value: int) -> int:
    if value < 0:
        raise ValueError(f"negative id {value}")
    if value > MAX_ID:
        raise ValueError(f"id {value} is beyond {MAX_ID}")
    return value


# --- deciding how to write -------------------------------------------------


@dataclass(frozen=True, slots=True)
class MapPlan:
    """What to write into a new user namespace, and how.

    ``deny_setgroups``: write ``deny`` to ``/proc/PID/setgroups`` before
    ``gid_map`` (needed for an unprivileged direct write). ``use_helpers``:
    write through ``newuidmap``/``newgidmap`` instead of directly.
    """

    uid_map: IdMap | None
    gid_map: IdMap | None
    deny_setgroups: bool
    use_helpers: bool


def _cap_eff() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0  # pragma: no cover - every Linux since 2.6.24 has CapEff


def _own_single(m: IdMap, own: int) -> bool:
    return len(m.ranges) == 1 and m.ranges[0].count == 1 and m.ranges[0].outside == own


def _subids(path: str, uid: int) -> list[tuple[int, int]]:
    """``(start, count)`` ranges of ``/etc/subuid``-style ``path`` for ``uid``."""
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = None
    keys = {str(uid)} | ({name} if name else set())
    out: list[tuple[int, int]] = []
    try:
        with open(path) as f:
            for line in f:
                parts = line.strip().split(":")
                if (
                    len(parts) == 3
                    and parts[0] in keys
                    and parts[1].isdigit()
                    and parts[2].isdigit()
                ):
                    out.append((int(parts[1]), int(parts[2])))
    except OSError:
        return []
    return out


def _uncovered(m: IdMap, own: int, allowed: list[tuple[int, int]]) -> list[IdRange]:
    """Ranges the helpers would refuse: neither the own id nor inside ``allowed``.

    newuidmap (shadow) accepts a range when it lies inside one subordinate
    range, or when it is the caller's own id with count 1.
    """
    bad = []
    for r in m.ranges:
        if r.count == 1 and r.outside == own:
            continue
        if not any(s <= r.outside and r.outside + r.count <= s + n for s, n in allowed):
            bad.append(r)
    return bad


_PLAN_CACHE: dict[tuple[object, ...], MapPlan | None] = {}
_PLAN_CACHE_MAX = 128


def plan_maps(uid_map: MapSpec, gid_map: MapSpec, map_zero: bool = False) -> MapPlan | None:
    """Validate both maps and decide how to write them; None if there are none.

    Plans for hashable specs are remembered per effective uid/gid (spawning
    the same sandbox again should not re-read ``/proc/self/status``); a
    process that changes its capabilities without changing ids should not
    rely on a plan made before.

    ``map_zero=True`` fills a missing map with "own id → 0". A caller with
    ``CAP_SETUID``/``CAP_SETGID`` writes any map directly; an unprivileged
    caller writes directly only a single line mapping its own id, and needs
    ``newuidmap``/``newgidmap`` plus ``/etc/subuid``/``/etc/subgid`` ranges
    for anything else, or gets a ``PermissionError`` saying so. Runs before
    any process exists.

    >>> plan = plan_maps(None, None, map_zero=True)
    >>> plan.uid_map.render() == f"0 {os.getuid()} 1\\n".encode()
    True
    >>> plan_maps(None, None) is None
    True
    """
    if not isinstance(map_zero, bool):
        raise TypeError(f"map_zero must be a bool, not {type(map_zero).__name__}")
    uid = os.geteuid()
    gid = os.getegid()
    key: tuple[object, ...] | None = None
    if all(_cacheable(m) for m in (uid_map, gid_map)):
        key = (
            type(uid_map),
            uid_map,
            type(gid_map),
            gid_map,
            map_zero,
            uid,
            gid,
            os.getuid(),
            os.getgid(),
        )
        try:
            return _PLAN_CACHE[key]
        except KeyError:
            pass
    plan = _plan_maps(uid_map, gid_map, map_zero, uid, gid)
    if key is not None:
        if len(_PLAN_CACHE) >= _PLAN_CACHE_MAX:
            _PLAN_CACHE.clear()
        _PLAN_CACHE[key] = plan
    return plan


def _cacheable(spec: object) -> bool:
    return (
        spec is None
        or isinstance(spec, (bool, int, str, IdMap))
        or (isinstance(spec, tuple) and all(isinstance(x, (int, str)) for x in spec))
    )


def _plan_maps(
    uid_map: MapSpec, gid_map: MapSpec, map_zero: bool, uid: int, gid: int
) -> MapPlan | None:
    umap = parse_map(uid_map, field="uid_map")
    gmap = parse_map(gid_map, field="gid_map")
    if map_zero:
        umap = umap or IdMap((IdRange(0, os.getuid(), 1),))
        gmap = gmap or IdMap((IdRange(0, os.getgid(), 1),))
    if umap is None and gmap is None:
        return None
    caps = _cap_eff()
    uid_direct = umap is None or bool(caps >> _CAP_SETUID & 1) or _own_single(umap, uid)
    gid_direct = gmap is None or bool(caps >> _CAP_SETGID & 1) or _own_single(gmap, gid)
    if uid_direct and gid_direct:
        # Only an unprivileged gid_map write needs setgroups "deny" (Linux 3.19);
        # a privileged caller keeps setgroups(2) usable inside.
        deny = gmap is not None and not caps >> _CAP_SETGID & 1
        return MapPlan(umap, gmap, deny_setgroups=deny, use_helpers=False)
    problems = []
    helpers = shutil.which("newuidmap") is not None and shutil.which("newgidmap") is not None
    for field, m, own, path in (
        ("uid_map", umap, uid, "/etc/subuid"),
        ("gid_map", gmap, gid, "/etc/subgid"),
    ):
        if m is None:
            continue
        bad = _uncovered(m, own, _subids(path, uid))
        if bad:
            lines = ", ".join(repr(r.line()) for r in bad)
            problems.append(f"{field} {lines} (own id {own}; not in {path})")
    if helpers and not problems:
        # newgidmap writes setgroups itself (deny only when it must).
        return MapPlan(umap, gmap, deny_setgroups=False, use_helpers=True)
    what = "; ".join(problems) if problems else "ids other than your own"
    raise PermissionError(
        errno.EPERM,
        f"cannot map {what}: without CAP_SETUID/CAP_SETGID only your own uid {uid} and "
        f"gid {gid} can be mapped, one line of count 1. To map more, install the `uidmap` "
        f"package (newuidmap/newgidmap{'' if not helpers else ', installed'}) and add a "
        f"range for this user to /etc/subuid and /etc/subgid, e.g. "
        f"`usermod --add-subuids 100000-165535 --add-subgids 100000-165535 "
        f"{_user_name(uid)}`, or run as root",
    )


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


# --- writing ----------------------------------------------------------------


def _write_file(path: str, data: bytes, step: str) -> None:
    """Open, one ``write()``, close; an error becomes SpawnError naming ``path``."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise SpawnError(exc.errno or errno.EIO, exc.strerror, path, step=step) from exc
    try:
        written = os.write(fd, data)
    except OSError as exc:
        raise SpawnError(exc.errno or errno.EIO, exc.strerror, path, step=step) from exc
    finally:
        os.close(fd)
    if written != len(data):  # the kernel takes a map in one write or not at all
        raise SpawnError(
            errno.EIO, f"short write ({written} of {len(data)} bytes)", path, step=step
        )


def _direct_steps(pid: int, plan: MapPlan, proc: str) -> list[tuple[str, bytes, str]]:
    steps = []
    if plan.uid_map is not None:
        steps.append((f"{proc}/{pid}/uid_map", plan.uid_map.render(), "uid_map"))
    if plan.deny_setgroups:
        steps.append((f"{proc}/{pid}/setgroups", b"deny", "setgroups"))
    if plan.gid_map is not None:
        steps.append((f"{proc}/{pid}/gid_map", plan.gid_map.render(), "gid_map"))
    return steps


def _helper_argvs(pid: int, plan: MapPlan) -> list[tuple[list[str], str, str]]:
    """``(argv, step, map file)`` for newuidmap/newgidmap (they use /proc)."""
    out = []
    for prog, m, name in (
        ("newuidmap", plan.uid_map, "uid_map"),
        ("newgidmap", plan.gid_map, "gid_map"),
    ):
        if m is None:
            continue
        argv = [shutil.which(prog) or prog, str(pid)]
        for r in m.ranges:
            argv += [str(r.inside), str(r.outside), str(r.count)]
        out.append((argv, prog, f"/proc/{pid}/{name}"))
    return out


def _helper_error(step: str, path: str, exc: OSError | None, rc: int, stderr: bytes) -> SpawnError:
    if exc is not None:
        return SpawnError(
            exc.errno or errno.EIO, f"cannot run {step}: {exc.strerror}", path, step=step
        )
    text = stderr.decode(errors="replace").strip() or "no message"
    return SpawnError(errno.EPERM, f"{step} exited with status {rc}: {text}", path, step=step)


def write_maps(pid: int, plan: MapPlan, *, proc: str = "/proc") -> None:
    """Write ``plan`` into the user namespace of ``pid`` (blocking).

    Order: uid_map, setgroups, gid_map. Raises :class:`SpawnError` with
    ``step`` and the file name. The helpers always use ``/proc``.

    >>> write_maps(pid, plan_maps(True, True))  # doctest: +SKIP
    """
    if not plan.use_helpers:
        for path, data, step in _direct_steps(pid, plan, proc):
            _write_file(path, data, step)
        return
    for argv, step, path in _helper_argvs(pid, plan):
        try:
            res = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                check=False,
            )
        except OSError as exc:
            raise _helper_error(step, path, exc, -1, b"") from exc
        if res.returncode != 0:
            raise _helper_error(step, path, None, res.returncode, res.stderr)


async def write_maps_async(pid: int, plan: MapPlan, *, proc: str = "/proc") -> None:
    """:func:`write_maps` for the event loop: helpers run as subprocesses.

    Direct writes are a few fast ``/proc`` writes and stay synchronous.
    Cancellation while a helper runs kills and reaps that helper, then
    re-raises (the caller then kills the child).

    >>> await write_maps_async(child_pid, plan)  # doctest: +SKIP
    """
    if not plan.use_helpers:
        write_maps(pid, plan, proc=proc)
        return
    for argv, step, path in _helper_argvs(pid, plan):
        try:
            helper = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise _helper_error(step, path, exc, -1, b"") from exc
        try:
            _, err = await helper.communicate()
        except BaseException:
            if helper.returncode is None:
                helper.kill()
                await asyncio.shield(helper.wait())
            raise
        if helper.returncode != 0:
            raise _helper_error(step, path, None, helper.returncode or -1, err)
