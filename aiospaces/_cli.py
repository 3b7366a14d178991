"""The ``aiospaces`` command line: ``run``, ``enter`` and ``check``.

A thin front end on the public API: every option maps onto a field of
:class:`~aiospaces.Sandbox` or an argument of :func:`~aiospaces.create_process`;
the CLI adds only what an application must do itself — pass its stdio
through, forward the signals it receives, and turn the outcome into an exit
status::

    aiospaces run -U -r -p -m --as-pid-1 -- sh -c 'mount -t proc proc /proc; ps ax'
    aiospaces run -U -r -p --ro-bind / / --proc /proc --tmpfs /tmp -- ps ax
    aiospaces enter 4242 --net --uts -- hostname
    aiospaces check --json

Exit status (the container-runtime convention, as ``docker run`` and
``bwrap``): the program's own; ``128+N`` when it died by signal N; ``125``
when aiospaces itself failed (one line on stderr says what, why, and how to
fix it when that is known); ``126`` when the program cannot be executed;
``127`` when it is not found; ``124`` when ``--timeout`` expired (as
``timeout(1)``); ``2`` for a usage error (argparse).

Signals: SIGINT, SIGTERM and SIGHUP received by the CLI are sent to the
sandbox through its pidfd (with a new pid namespace, to its init, which
forwards them to the program; with ``--as-pid-1`` the program is PID 1 and
ignores the ones it has no handler for). The handlers are the CLI's, installed
with ``loop.add_signal_handler``: the library never installs any.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, Final, Literal, NoReturn

from . import __version__
from ._errors import NamespaceUnavailable, SpawnError
from ._process import Process, create_process
from .sandbox import Bind, Dev, Mount, Proc, Sandbox, Tmpfs

__all__ = ["EXIT_CANNOT_EXEC", "EXIT_FAILURE", "EXIT_NOT_FOUND", "EXIT_TIMEOUT", "main"]

EXIT_TIMEOUT: Final = 124
"""``--timeout`` expired: the sandbox was killed (``timeout(1)``'s status)."""
EXIT_FAILURE: Final = 125
"""aiospaces itself failed: bad option values, a refused namespace, a setup step."""
EXIT_CANNOT_EXEC: Final = 126
"""The program exists but cannot be executed (``PermissionError``, ``ENOEXEC``)."""
EXIT_NOT_FOUND: Final = 127
"""The program was not found."""

FORWARDED: Final = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""The signals the CLI passes on to the sandbox."""

NS_OPTIONS: Final = (
    # (dest, short, long, namespace name, help)
    ("user", "-U", "--user", "user", "new user namespace"),
    ("pid", "-p", "--pid", "pid", "new pid namespace (the program runs under an init, PID 1)"),
    ("mount", "-m", "--mount", "mnt", "new mount namespace (propagation made private)"),
    ("net", "-n", "--net", "net", "new network namespace (loopback up)"),
    ("uts", "-u", "--uts", "uts", "new UTS namespace (hostname, domainname)"),
    ("ipc", "-i", "--ipc", "ipc", "new IPC namespace"),
    ("cgroup", "-C", "--cgroup", "cgroup", "new cgroup namespace"),
    ("time", "-T", "--time", "time", "new time namespace (Linux >= 5.6)"),
)

RUN_EXAMPLES: Final = """\
examples:
  # the shell is PID 1 of a new pid namespace, as root or unprivileged
  aiospaces run -U -r -p -m --as-pid-1 -- sh -c 'mount -t proc proc /proc; ps ax'
  # the same with an init (PID 1) that forwards signals and reaps orphans
  aiospaces run -U -r -p --ro-bind / / --proc /proc --tmpfs /tmp -- ps ax
  # a read-only host root, a private /tmp, no network, another hostname
  aiospaces run -U -r -p --ro-bind / / --proc /proc --dev /dev --tmpfs /tmp \\
      --network none --hostname box -- sh
  # an existing root file system (pyspaces' `space chroot`)
  aiospaces run -U -r -p --root ~/rootfs --proc /proc -- /bin/sh
  # machine-readable pid, namespace ids and exit status
  aiospaces run -U -r -n --json-status status.jsonl -- ip link

exit status: the program's; 128+N if it died by signal N; 124 --timeout expired;
125 aiospaces failed; 126 the program cannot be executed; 127 it was not found.
"""

ENTER_EXAMPLES: Final = """\
examples:
  aiospaces enter 4242 -- sh                  # every namespace of 4242 that differs from ours
  aiospaces enter 4242 --net --uts -- hostname
  aiospaces enter 4242 --user --net -- ip addr

Entering a pid namespace forks once more after setns: the program runs in the
target's pid namespace under a relay that forwards signals and its exit status.
"""

MAIN_EXAMPLES: Final = """\
examples:
  aiospaces check                              # what this host allows, and the fixes
  aiospaces run -U -r -p -m --as-pid-1 -- sh -c 'mount -t proc proc /proc; ps ax'
  aiospaces enter 4242 --net -- ip addr

`aiospaces COMMAND --help` shows each command's options.
"""


# -- parsing --------------------------------------------------------------------------------------


class _Ordered(argparse.Action):
    """Append ``(option, values)`` to one list shared by several options, so the
    filesystem (and environment) operations keep the command line's order."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        ops = list(getattr(namespace, self.dest, None) or [])
        vals = [] if values is None else [values] if isinstance(values, str) else list(values)
        ops.append((self.const, vals))
        setattr(namespace, self.dest, ops)


class _Parser(argparse.ArgumentParser):
    """argparse, with the program name of the command that failed in errors."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=30)


def _add_env_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("environment and working directory")
    g.add_argument(
        "--setenv",
        nargs=2,
        metavar=("NAME", "VALUE"),
        action=_Ordered,
        const="set",
        dest="env_ops",
        help="set an environment variable",
    )
    g.add_argument(
        "--unsetenv",
        metavar="NAME",
        action=_Ordered,
        const="unset",
        dest="env_ops",
        help="remove an environment variable",
    )
    g.add_argument(
        "--clearenv",
        nargs=0,
        action=_Ordered,
        const="clear",
        dest="env_ops",
        help="start from an empty environment (later --setenv adds to it)",
    )
    g.add_argument("--chdir", metavar="DIR", help="working directory of the program")


def _add_common_tail(p: argparse.ArgumentParser, metavar: str = "-- PROGRAM [ARGS...]") -> None:
    g = p.add_argument_group("supervision")
    g.add_argument(
        "--timeout",
        type=_seconds,
        metavar="SECONDS",
        help="kill the sandbox after SECONDS and exit 124",
    )
    g.add_argument(
        "--json-status",
        metavar="FILE",
        help="write JSON lines to FILE: the pid and namespace ids once started, "
        "then the exit status (as bwrap's --json-status-fd)",
    )
    p.add_argument(
        "command",
        nargs=argparse.REMAINDER,
        metavar=metavar,
        help="the program to run and its arguments",
    )


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value < float("inf"):  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text!r}")
    return value


def _count(text: str) -> int:
    if not text.isascii() or not text.isdigit() or int(text) <= 0:
        raise argparse.ArgumentTypeError(f"not a positive number: {text!r}")
    return int(text)


def _cpus(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of CPUs: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of CPUs: {text!r}")
    return value


def _rlimit_value(text: str) -> int | str:
    if text in ("unlimited", "infinity"):
        return "unlimited"
    if not text.isascii() or not text.isdigit():
        raise argparse.ArgumentTypeError(f"not a limit (a number or 'unlimited'): {text!r}")
    return int(text)


def _rlimit(text: str) -> tuple[str, int | str | tuple[int | str, int | str]]:
    name, eq, value = text.partition("=")
    if not eq or not name or not value:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE or NAME=SOFT:HARD, not {text!r}")
    if ":" in value:
        soft, _, hard = value.partition(":")
        return name, (_rlimit_value(soft), _rlimit_value(hard))
    return name, _rlimit_value(value)


def _pid(text: str) -> int:
    if not text.isascii() or not text.isdigit() or int(text) <= 0:
        raise argparse.ArgumentTypeError(f"not a pid: {text!r}")
    return int(text)


def _id(text: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise argparse.ArgumentTypeError(f"not a numeric id: {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    """The ``aiospaces`` argument parser (``run``, ``enter``, ``check``)."""
    main = _Parser(
        prog="aiospaces",
        description="Run programs in Linux namespaces: an asyncio-native supervisor's "
        "command line.",
        epilog=MAIN_EXAMPLES,
        formatter_class=_formatter,
    )
    main.add_argument("--version", action="version", version=f"aiospaces {__version__}")
    sub = main.add_subparsers(dest="cmd", metavar="COMMAND", required=True)

    # -- run ----------------------------------------------------------------------
    run = sub.add_parser(
        "run",
        help="run a program in new namespaces (unshare, bwrap)",
        description="Run PROGRAM in new namespaces, with a new root, mounts, network, "
        "ids and environment. Options map onto aiospaces.Sandbox fields.",
        usage="aiospaces run [OPTIONS] -- PROGRAM [ARGS...]",
        epilog=RUN_EXAMPLES,
        formatter_class=_formatter,
    )
    g = run.add_argument_group("namespaces")
    for dest, short, long, _name, text in NS_OPTIONS:
        g.add_argument(short, long, dest=dest, action="store_true", help=text)
    g.add_argument("-a", "--all", action="store_true", help="every namespace above")

    g = run.add_argument_group("ids (a MAP is 'INSIDE OUTSIDE COUNT[,...]' or 'ID[,ID...]')")
    g.add_argument(
        "-r",
        "--map-root-user",
        action="store_true",
        help="map your uid and gid to 0 inside (implies --user)",
    )
    g.add_argument("--uid-map", metavar="MAP", help="uid map of a new user namespace (implies -U)")
    g.add_argument("--gid-map", metavar="MAP", help="gid map of a new user namespace (implies -U)")
    g.add_argument("--uid", type=_id, help="switch to this uid (as mapped inside) before exec")
    g.add_argument("--gid", type=_id, help="switch to this gid (as mapped inside) before exec")

    g = run.add_argument_group(
        "filesystem (in command-line order; any mount builds a new root on an empty tmpfs)"
    )
    g.add_argument(
        "--root",
        metavar="DIR",
        help="start the new root from DIR (pyspaces' chroot, done with pivot_root)",
    )
    g.add_argument(
        "--bind",
        nargs=2,
        metavar=("SRC", "DST"),
        action=_Ordered,
        const="bind",
        dest="fs_ops",
        help="bind-mount host path SRC at DST",
    )
    g.add_argument(
        "--ro-bind",
        nargs=2,
        metavar=("SRC", "DST"),
        action=_Ordered,
        const="ro-bind",
        dest="fs_ops",
        help="the same, read-only",
    )
    g.add_argument(
        "--tmpfs",
        metavar="DST",
        action=_Ordered,
        const="tmpfs",
        dest="fs_ops",
        help="a fresh tmpfs at DST",
    )
    g.add_argument(
        "--proc",
        metavar="DST",
        action=_Ordered,
        const="proc",
        dest="fs_ops",
        help="the new pid namespace's proc at DST (needs --pid)",
    )
    g.add_argument(
        "--dev",
        metavar="DST",
        action=_Ordered,
        const="dev",
        dest="fs_ops",
        help="a minimal /dev at DST (null, zero, random, tty, pts, shm, ...)",
    )

    g = run.add_argument_group("identity and network")
    g.add_argument("--hostname", help="hostname inside (implies --uts)")
    g.add_argument("--domainname", help="NIS domain name inside (implies --uts)")
    g.add_argument(
        "--network",
        choices=("none", "loopback", "host"),
        help="none: loopback down; loopback: up (default with --net); host: the host's",
    )
    g.add_argument(
        "--as-pid-1",
        action="store_true",
        help="with --pid, the program itself is PID 1 (no init: it ignores signals it "
        "has no handler for)",
    )
    g = run.add_argument_group("limits and hardening")
    g.add_argument("--memory", metavar="SIZE", help="cgroup memory limit (512M, 1G, bytes)")
    g.add_argument("--pids", type=_count, metavar="N", help="cgroup limit on processes")
    g.add_argument("--cpus", type=_cpus, metavar="CPUS", help="cgroup CPU limit (0.5: half a CPU)")
    g.add_argument(
        "--rlimit",
        type=_rlimit,
        action="append",
        metavar="NAME=VALUE",
        help="an rlimit: NOFILE=256, CPU=10 (seconds), STACK=SOFT:HARD, "
        "CORE=unlimited (repeatable)",
    )
    g.add_argument(
        "--seccomp",
        action="append",
        metavar="PRESET",
        help="a seccomp preset: default (what container runtimes deny), no-network "
        "(repeatable; needs pyseccomp)",
    )
    g.add_argument(
        "--cap-drop",
        choices=("ALL",),
        help="drop every capability (bwrap's default; aiospaces run keeps them, as unshare)",
    )
    g.add_argument(
        "--cap-add",
        action="append",
        metavar="CAP",
        help="with --cap-drop ALL, keep this capability (CAP_NET_ADMIN; repeatable)",
    )
    _add_env_options(run)
    _add_common_tail(run)
    run.set_defaults(func=_cmd_run, parser=run)

    # -- enter --------------------------------------------------------------------
    enter = sub.add_parser(
        "enter",
        help="run a program in the namespaces of a running process (nsenter)",
        description="Run PROGRAM in the namespaces of TARGET_PID (setns through a pidfd: "
        "atomic and race-free). Without namespace options: every namespace of the "
        "target that differs from ours.",
        usage="aiospaces enter TARGET_PID [--all | --user --net ...] -- PROGRAM [ARGS...]",
        epilog=ENTER_EXAMPLES,
        formatter_class=_formatter,
    )
    g = enter.add_argument_group("namespaces to join")
    for dest, short, long, name, _text in NS_OPTIONS:
        g.add_argument(short, long, dest=dest, action="store_true", help=f"join its {name} ns")
    g.add_argument(
        "-a",
        "--all",
        action="store_true",
        help="every namespace that differs from ours (the default)",
    )
    g = enter.add_argument_group("ids")
    g.add_argument("--uid", type=_id, help="switch to this uid before exec")
    g.add_argument("--gid", type=_id, help="switch to this gid before exec")
    _add_env_options(enter)
    _add_common_tail(enter, "TARGET_PID -- PROGRAM [ARGS...]")
    enter.set_defaults(func=_cmd_enter, parser=enter)

    # -- check --------------------------------------------------------------------
    check = sub.add_parser(
        "check",
        help="what this host allows (user namespaces, clone3, pidfd, cgroups, ...)",
        description="Preflight report: one line per feature with a verdict, and the fix "
        "where something is missing. Exit status 0 when aiospaces can run sandboxes "
        "here, 1 when it cannot.",
        formatter_class=_formatter,
    )
    check.add_argument("--json", action="store_true", help="one JSON object on stdout")
    check.set_defaults(func=_cmd_check)
    return main


# -- from options to the API ------------------------------------------------------------------


def environment(ops: Sequence[tuple[str, list[str]]] | None) -> dict[str, str] | None:
    """The program's full environment after ``--clearenv``/``--setenv``/``--unsetenv``
    (applied in order, as bwrap does), or ``None`` to inherit ours unchanged."""
    if not ops:
        return None
    env = dict(os.environ)
    for op, vals in ops:
        if op == "clear":
            env.clear()
        elif op == "set":
            env[vals[0]] = vals[1]
        else:
            env.pop(vals[0], None)
    return env


def mounts(ops: Sequence[tuple[str, list[str]]] | None) -> tuple[Mount, ...]:
    """The mounts of ``--bind``/``--ro-bind``/``--tmpfs``/``--proc``/``--dev``, in order."""
    out: list[Mount] = []
    for op, vals in ops or ():
        if op == "bind":
            out.append(Bind(vals[0], vals[1]))
        elif op == "ro-bind":
            out.append(Bind(vals[0], vals[1], readonly=True))
        elif op == "tmpfs":
            out.append(Tmpfs(vals[0]))
        elif op == "proc":
            out.append(Proc(vals[0]))
        else:
            out.append(Dev(vals[0]))
    return tuple(out)


def run_sandbox(args: argparse.Namespace) -> Sandbox:
    """The :class:`Sandbox` of ``aiospaces run``'s options (``ValueError``/``TypeError``
    name the field a value is wrong for)."""
    names = {name for dest, _s, _l, name, _h in NS_OPTIONS if getattr(args, dest)}
    if args.all:
        names.add("all")
    if args.map_root_user or args.uid_map or args.gid_map:
        names.add("user")  # as unshare: mapping options imply --user
    env = environment(args.env_ops)
    keep_caps: frozenset[str] | Literal["all"] = "all"
    if args.cap_drop == "ALL":
        keep_caps = frozenset(args.cap_add or ())
    elif args.cap_add:
        raise ValueError("--cap-add keeps a capability after --cap-drop ALL: add --cap-drop ALL")
    return Sandbox(
        namespaces=names,
        uid_map=args.uid_map,
        gid_map=args.gid_map,
        map_zero=True if args.map_root_user else None,
        uid=args.uid,
        gid=args.gid,
        hostname=args.hostname,
        domainname=args.domainname,
        mounts=mounts(args.fs_ops),
        chroot=args.root,
        cwd=args.chdir,
        network=args.network,
        env=env,
        clear_env=env is not None,
        rlimits=dict(args.rlimit) if args.rlimit else None,
        memory_max=args.memory,
        pids_max=args.pids,
        cpu_max=args.cpus,
        seccomp=tuple(args.seccomp) if args.seccomp else None,
        keep_caps=keep_caps,
    )


def enter_sandbox(args: argparse.Namespace) -> Sandbox:
    """The :class:`Sandbox` of ``aiospaces enter``'s options."""
    names = {name for dest, _s, _l, name, _h in NS_OPTIONS if getattr(args, dest)}
    env = environment(args.env_ops)
    return Sandbox(
        enter=args.target,
        join=None if args.all or not names else names,
        uid=args.uid,
        gid=args.gid,
        cwd=args.chdir,
        env=env,
        clear_env=env is not None,
        keep_caps="all",  # as nsenter
    )


# -- running ----------------------------------------------------------------------------------


def namespace_ids(pid: int) -> dict[str, int]:
    """``{"pid-namespace": inode, ...}`` of ``pid``, from ``/proc/PID/ns`` (bwrap's keys)."""
    out: dict[str, int] = {}
    for ns in ("cgroup", "ipc", "mnt", "net", "pid", "time", "user", "uts"):
        try:
            link = os.readlink(f"/proc/{pid}/ns/{ns}")
        except OSError:
            continue
        out[f"{ns}-namespace"] = int(link[link.index("[") + 1 : -1])
    return out


@dataclass
class _Status:
    """``--json-status``: one JSON object per line, flushed as it happens."""

    file: IO[str] | None
    closed: bool = field(default=False)

    def write(self, obj: dict[str, Any]) -> None:
        if self.file is None or self.closed:
            return
        self.file.write(json.dumps(obj) + "\n")
        self.file.flush()

    def close(self) -> None:
        if self.file is not None and not self.closed:
            self.closed = True
            self.file.close()


def exit_status(returncode: int) -> int:
    """The CLI's exit status for a program's ``returncode`` (``-N`` → ``128+N``)."""
    return 128 - returncode if returncode < 0 else returncode


async def supervise(
    argv: list[str],
    sandbox: Sandbox,
    *,
    as_pid_1: bool = False,
    timeout: float | None = None,  # noqa: ASYNC109 - the sandbox's deadline, as run()'s
    report: Callable[[dict[str, Any]], None] | None = None,
) -> int:
    """Start ``argv`` in ``sandbox`` with our stdio, forward SIGINT/SIGTERM/SIGHUP to
    it, wait for it; return the CLI's exit status (errors propagate).

    ``report`` receives the ``--json-status`` records: ``{"child-pid": ...,
    "<ns>-namespace": inode, ...}`` once the program runs (the namespaces
    are missing if it is already gone), then ``{"exit-code": ...}`` (with
    ``"signal"`` when it was killed, ``"timeout"`` when ``timeout`` expired).
    """
    loop = asyncio.get_running_loop()
    proc: Process | None = None
    pending: list[int] = []

    def forward(sig: int) -> None:
        if proc is None:
            pending.append(sig)  # delivered as soon as it runs
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)

    for sig in FORWARDED:
        loop.add_signal_handler(sig, forward, sig)
    try:
        proc = await create_process(argv, sandbox=sandbox, as_pid_1=as_pid_1)
        if report is not None:
            report({"child-pid": proc.pid, **namespace_ids(proc.pid)})
        for early in pending:
            forward(early)
        try:
            async with asyncio.timeout(timeout):
                rc = await proc.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            rc = await proc.wait()
            if report is not None:
                report({"exit-code": EXIT_TIMEOUT, "timeout": timeout})
            _say(f"timed out after {timeout:g} seconds: the sandbox was killed")
            return EXIT_TIMEOUT
        code = exit_status(rc)
        if report is not None:
            record: dict[str, Any] = {"exit-code": code}
            if rc < 0:
                record["signal"] = -rc
            report(record)
        return code
    finally:
        for sig in FORWARDED:
            loop.remove_signal_handler(sig)


def _say(message: str) -> None:
    print(f"aiospaces: {message}", file=sys.stderr, flush=True)


def describe_failure(
    exc: BaseException, argv: Sequence[str], *, wants_user: bool
) -> tuple[int, str]:
    """``(exit status, one-line message)`` for an exception from starting ``argv``."""
    program = argv[0] if argv else ""
    if isinstance(exc, SpawnError):
        text = f"{exc.step}: {exc.strerror}"
        if exc.filename:
            text += f": {exc.filename}"
        hint = exc.hint
        if isinstance(exc, NamespaceUnavailable) and not wants_user and exc.errno == 1:
            hint = "new namespaces need root: add -U -r (a user namespace) to run unprivileged"
        if hint:
            text += f" (hint: {hint})"
        return EXIT_FAILURE, text
    if isinstance(exc, OSError) and exc.filename == program and exc.filename is not None:
        why = exc.strerror or str(exc)
        if isinstance(exc, FileNotFoundError):
            return EXIT_NOT_FOUND, f"{program}: command not found ({why})"
        return EXIT_CANNOT_EXEC, f"{program}: cannot execute: {why}"
    if isinstance(exc, OSError):
        text = exc.strerror or str(exc)
        if exc.filename is not None:
            text += f": {exc.filename!r}"
        return EXIT_FAILURE, text
    return EXIT_FAILURE, str(exc) or type(exc).__name__


def _open_status(path: str | None) -> _Status:
    if path is None:
        return _Status(None)
    return _Status(open(path, "w", encoding="utf-8"))


def _start(
    args: argparse.Namespace,
    build: Callable[[argparse.Namespace], Sandbox],
    *,
    as_pid_1: bool,
    wants_user: bool,
) -> int:
    argv = list(args.command)
    try:
        sandbox = build(args)
    except (ValueError, TypeError, OSError, ImportError) as exc:
        _say(f"{args.cmd}: {describe_failure(exc, (), wants_user=True)[1]}")
        return EXIT_FAILURE
    try:
        status = _open_status(args.json_status)
    except OSError as exc:
        _say(f"--json-status: {exc.strerror}: {args.json_status!r}")
        return EXIT_FAILURE
    try:
        return asyncio.run(
            supervise(argv, sandbox, as_pid_1=as_pid_1, timeout=args.timeout, report=status.write)
        )
    except (OSError, ValueError, TypeError, ImportError) as exc:
        if os.environ.get("AIOSPACES_DEBUG"):
            raise
        code, message = describe_failure(exc, argv, wants_user=wants_user)
        status.write({"exit-code": code, "error": message})
        _say(message)
        return code
    finally:
        status.close()


def _cmd_run(args: argparse.Namespace) -> int:
    wants_user = bool(args.user or args.all or args.map_root_user or args.uid_map or args.gid_map)
    return _start(args, run_sandbox, as_pid_1=args.as_pid_1, wants_user=wants_user)


def _cmd_enter(args: argparse.Namespace) -> int:
    return _start(args, enter_sandbox, as_pid_1=False, wants_user=True)


def _cmd_check(args: argparse.Namespace) -> int:
    from .check import main as check_main  # noqa: PLC0415 - probes load only for `check`

    return check_main(as_json=args.json)


def split_command(argv: Sequence[str]) -> tuple[list[str], list[str] | None, str | None]:
    """Split ``aiospaces`` arguments into ``(options, program, target)``.

    ``program`` is what follows the first ``--`` after ``run``/``enter``
    (``None`` without one: argparse's ``REMAINDER`` then starts the program at
    the first positional argument); ``target`` is ``enter``'s TARGET_PID when it
    comes right after ``enter``. argparse alone would let a positional
    ``REMAINDER`` swallow the options that follow ``enter TARGET_PID``.
    """
    argv = list(argv)
    i = next((k for k, a in enumerate(argv) if not a.startswith("-")), len(argv))
    if i == len(argv) or argv[i] not in ("run", "enter"):
        return argv, None, None
    head, rest = argv[: i + 1], argv[i + 1 :]
    target = None
    if argv[i] == "enter" and rest and not rest[0].startswith("-"):
        target = rest.pop(0)
    program = None
    if "--" in rest:
        k = rest.index("--")
        rest, program = rest[:k], rest[k + 1 :]
    return head + rest, program, target


def main(argv: Sequence[str] | None = None) -> int:
    """The ``aiospaces`` console script; returns the exit status.

    >>> main(["run", "-U", "-r", "--", "true"])  # doctest: +SKIP
    0
    """
    parser = build_parser()
    options, program, target = split_command(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(options)
    if args.cmd in ("run", "enter"):
        command = list(args.command)
        if args.cmd == "enter" and target is None:
            target = command.pop(0) if command else None
            if target is None:
                args.parser.error("name the TARGET_PID whose namespaces to enter")
        if program is not None:
            # "run sh -- x": the program started before the "--", which is its argument.
            command = [*command, "--", *program] if command else program
        if not command:
            args.parser.error("name the PROGRAM to run, after --")
        args.command = command
        if args.cmd == "enter":
            try:
                args.target = _pid(str(target))
            except argparse.ArgumentTypeError as exc:
                args.parser.error(f"argument TARGET_PID: {exc}")
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    except BrokenPipeError:
        # stdout closed early (`aiospaces check | head`): as CPython's docs advise.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 128 + signal.SIGPIPE
    return code
