"""Scenario 1: fn spawn-to-exit per namespace set, beside fork, multiprocessing
and the seed library pyspaces 1.4.1."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable

import aiospaces
from aiospaces import (
    CLONE_NEWIPC,
    CLONE_NEWNET,
    CLONE_NEWNS,
    CLONE_NEWPID,
    CLONE_NEWUSER,
    CLONE_NEWUTS,
)

from . import _targets
from ._harness import Candidate, Row, interleave

NS_SETS = {
    "none": 0,
    "user+pid": CLONE_NEWUSER | CLONE_NEWPID,
    "user+pid+mnt+uts+ipc": CLONE_NEWUSER
    | CLONE_NEWPID
    | CLONE_NEWNS
    | CLONE_NEWUTS
    | CLONE_NEWIPC,
    "all with net": CLONE_NEWUSER
    | CLONE_NEWPID
    | CLONE_NEWNS
    | CLONE_NEWUTS
    | CLONE_NEWIPC
    | CLONE_NEWNET,
}
_PYSPACES_KW = {
    CLONE_NEWUSER: "newuser",
    CLONE_NEWPID: "newpid",
    CLONE_NEWNS: "newns",
    CLONE_NEWUTS: "newuts",
    CLONE_NEWIPC: "newipc",
    CLONE_NEWNET: "newnet",
}


def _noop() -> None:
    pass


async def fork_floor() -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)  # noqa: ASYNC222 - the floor: a blocking fork+wait


def _pyspaces(flags: int) -> Candidate:
    try:
        from pyspaces import Container
    except ImportError:
        return Candidate("pyspaces 1.4.1", None, "pip install -e '.[bench]' (pyspaces==1.4.1)")
    kw = {name: True for bit, name in _PYSPACES_KW.items() if flags & bit}
    if flags & CLONE_NEWUSER:
        kw["map_zero"] = True

    async def op() -> None:
        c = Container(target=_noop, **kw)
        c.start()
        c.join()
        assert c.exitcode == 0, c.exitcode

    return Candidate("pyspaces 1.4.1 Container", op)


def _multiprocessing(flags: int) -> Candidate:
    if flags:
        return Candidate("multiprocessing.Process", None, "cannot create namespaces")
    ctx = multiprocessing.get_context("fork")

    async def op() -> None:
        p = ctx.Process(target=_noop)
        p.start()
        p.join()

    return Candidate("multiprocessing.Process (fork)", op)


def _spawn(flags: int) -> Candidate:
    async def op() -> None:
        child = await aiospaces.spawn(
            _noop, flags, map_zero=bool(flags & CLONE_NEWUSER), via="fork"
        )
        await child.result()

    return Candidate("aiospaces.spawn via=fork", op)


def _spawn_via(flags: int, sp: aiospaces.Spawner, fn: Callable[[], None], label: str) -> Candidate:
    async def op() -> None:
        child = await aiospaces.spawn(fn, flags, map_zero=bool(flags & CLONE_NEWUSER), spawner=sp)
        await child.result()

    return Candidate(f"aiospaces.spawn via=spawner, {label}", op)


async def run(rounds: int) -> list[Row]:
    rows: list[Row] = []
    # Two spawners: one only ever imports a lean module, the other imports
    # this one (asyncio, the whole package): the spawner's size is the cost.
    async with aiospaces.Spawner() as lean, aiospaces.Spawner() as heavy:
        for case, flags in NS_SETS.items():
            candidates = [
                Candidate("os.fork + waitpid (floor)", fork_floor, floor=True),
                _spawn(flags),
                _spawn_via(flags, lean, _targets.noop, "lean fn module"),
                _spawn_via(flags, heavy, _noop, "fn module imports asyncio"),
                _pyspaces(flags),
                _multiprocessing(flags),
            ]
            rows += await interleave("fn spawn-to-exit", case, candidates, rounds)
    return rows
