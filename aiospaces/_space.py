"""``space``: pyspaces' command line (``execute``, ``chroot``, ``inject``) on aiospaces.

The seed's flags are accepted as they were and mapped onto the same
:class:`~aiospaces.Sandbox` and :func:`~aiospaces._cli.supervise` as
``aiospaces run``/``enter``::

    space execute --pid --fs --user --uid '0 1000 1' bash
    space chroot --pid --uid '0 1000 1' ~/rootfs /bin/ls /home
    space inject --all 12603 bash

What stays as it was: the program is PID 1 of a new pid namespace (pyspaces
exec'd it in the cloned child, with no init); ``chroot`` always adds user and
mount namespaces; ``-a`` means the six namespaces pyspaces knew (ipc, mnt,
net, pid, uts, user); ``-M``/``-G`` take the seed's map formats (``'0 1000
1'``, ``'0 1000 1,1 1001 1'``, ``'1000,1001'``), ``-z`` maps your ids to 0;
``-v`` prints the child's pid and status. What is better: the exit status is
the program's (pyspaces always exited 0), errors are one line with exit
status 125/126/127, ``chroot`` uses ``pivot_root``, and ``inject`` joins
through a pidfd (its ``--proc`` is accepted and no longer needed).
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable, Sequence
from typing import Any, Final

from . import __version__
from ._cli import EXIT_FAILURE, _say, describe_failure, supervise
from .sandbox import Sandbox

__all__ = ["main"]

SEED_ALL: Final = frozenset({"ipc", "mnt", "net", "pid", "uts", "user"})


def _flags(p: argparse.ArgumentParser, *, user: bool, mount: bool) -> None:
    p.add_argument("--verbose", "-v", action="store_true", help="print the pid and the status")
    p.add_argument("--all", "-a", action="store_true", help="use all 6 namespaces")
    p.add_argument("--ipc", "-i", action="store_true", help="new IPC namespace")
    if mount:
        p.add_argument("--mnt", "--fs", "-m", action="store_true", help="new mount namespace")
    p.add_argument("--net", "-n", action="store_true", help="new network namespace")
    p.add_argument("--pid", "-p", action="store_true", help="new PID namespace")
    p.add_argument("--uts", "-u", action="store_true", help="new UTS namespace")
    if user:
        p.add_argument("--user", "-U", action="store_true", help="new user namespace")
    p.add_argument("--uid", "-M", default="", help="UID map for the user namespace")
    p.add_argument("--gid", "-G", default="", help="GID map for the user namespace")
    p.add_argument(
        "--id",
        "-z",
        action="store_true",
        help="map your UID and GID to 0 in the user namespace "
        "(equivalent to: -M '0 <uid> 1' -G '0 <gid> 1')",
    )


def build_parser() -> argparse.ArgumentParser:
    """pyspaces' ``space`` parser, with ``argv`` as the rest of the command line."""
    main = argparse.ArgumentParser(
        prog="space",
        description="Space is tool for managing linux namespaces containers "
        "(pyspaces' command line, run by aiospaces).",
        epilog=f"aiospaces {__version__}; see also: aiospaces run --help",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    main.add_argument(
        "--verbose", "-v", dest="verbose_main", action="store_true", help="enables verbose mode"
    )
    sub = main.add_subparsers(dest="cmd", metavar="<command>", required=True)

    ex = sub.add_parser("execute", help="run program in new namespaces")
    _flags(ex, user=True, mount=True)
    ex.add_argument("argv", nargs=argparse.REMAINDER, help="command with args for executing")

    ch = sub.add_parser("chroot", help="run program in new root and namespaces")
    _flags(ch, user=False, mount=False)
    ch.add_argument("path", help="new root directory")
    ch.add_argument("argv", nargs=argparse.REMAINDER, help="command with args for executing")

    inj = sub.add_parser("inject", help="run program in namespaces of another process")
    _flags(inj, user=True, mount=True)
    inj.add_argument("--proc", default="/proc", help="root directory of proc fs (not needed)")
    inj.add_argument("target_pid", help="pid of target process")
    inj.add_argument("argv", nargs=argparse.REMAINDER, help="command with args for executing")
    return main


def _namespaces(args: argparse.Namespace) -> set[str]:
    names = {
        ns
        for opt, ns in (
            ("ipc", "ipc"),
            ("mnt", "mnt"),
            ("net", "net"),
            ("pid", "pid"),
            ("uts", "uts"),
            ("user", "user"),
        )
        if getattr(args, opt, False)
    }
    if args.all:
        names |= SEED_ALL
    return names


def sandbox_of(args: argparse.Namespace) -> tuple[Sandbox, bool]:
    """``(Sandbox, as_pid_1)`` for a parsed ``space`` command line."""
    names = _namespaces(args)
    if args.cmd == "inject":
        return Sandbox(enter=int(args.target_pid), join=names or None, keep_caps="all"), False
    if args.cmd == "chroot":
        names |= {"user", "mnt"}  # pyspaces' Chroot always set newuser and newns
    maps = bool(args.uid or args.gid or args.id)
    if maps and "user" not in names:
        raise ValueError("-M/-G/-z need a new user namespace: add --user (-U)")
    sandbox = Sandbox(
        namespaces=names,
        uid_map=args.uid or None,
        gid_map=args.gid or None,
        map_zero=True if args.id else None,
        chroot=args.path if args.cmd == "chroot" else None,
        keep_caps="all",  # pyspaces kept every capability and set no no_new_privs
        no_new_privs=False,
    )
    return sandbox, "pid" in names


def _verbose() -> Callable[[dict[str, Any]], None]:
    """pyspaces' ``-v`` lines, from the records :func:`supervise` reports."""
    pid = 0

    def report(record: dict[str, Any]) -> None:
        nonlocal pid
        if "child-pid" in record:
            pid = record["child-pid"]
            print(f"PID of child created by clone() is {pid}\n", flush=True)
        else:
            print(f"Child returned: pid {pid}, status {record['exit-code']}", flush=True)

    return report


def main(argv: Sequence[str] | None = None) -> int:
    """The ``space`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    command = list(args.argv)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        parser.error(f"{args.cmd}: the following arguments are required: argv")
    if args.cmd == "inject" and not args.target_pid.isdigit():
        parser.error(f"inject: not a pid: {args.target_pid!r}")
    try:
        sandbox, as_pid_1 = sandbox_of(args)
    except (ValueError, TypeError, OSError) as exc:
        _say(f"space {args.cmd}: {describe_failure(exc, (), wants_user=True)[1]}")
        return EXIT_FAILURE
    verbose = args.verbose or args.verbose_main
    try:
        return asyncio.run(
            supervise(command, sandbox, as_pid_1=as_pid_1, report=_verbose() if verbose else None)
        )
    except (OSError, ValueError, TypeError) as exc:
        code, message = describe_failure(exc, command, wants_user="user" in _namespaces(args))
        _say(message)
        return code
