"""pyspaces' front end: ``Container`` and ``Chroot`` on top of :class:`~aiospaces.cloning.Clone`.

Same keyword arguments as ``pyspaces.Container``; a ``multiprocessing.Process``
whose child starts in new namespaces::

    from aiospaces.compat import Container

    c = Container(target=os.execvp, args=("sh", ["sh", "-c", "id; ps ax"]),
                  newuser=True, newpid=True, newns=True, map_zero=True)
    c.start(); c.join()

In the child, before ``target`` runs: stdio is redirected (``stdin``/
``stdout``/``stderr``), then ``chroot(rootdir)``, then ``chdir(workdir)``.
Unlike the seed, stdio paths are opened *before* the chroot, so they name
files as the caller sees them, and a path for ``stdout``/``stderr`` is opened
for appending (created if missing) instead of the seed's read-only open.
The seed's hooks (``preup``, ``postup``, ``exceptup``, ``preexec``,
``postexec``, ``exceptexec``) are kept for subclasses.

``Inject`` (a ``Container`` that joins another process' namespaces) and the
``setns`` context manager keep pyspaces' shape; see their docstrings for
where they differ from the seed.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import IO, Any, TypeAlias

from . import idmap
from ._linux import validate_flags
from ._linux.constants import (
    CLONE_NEWIPC,
    CLONE_NEWNET,
    CLONE_NEWNS,
    CLONE_NEWPID,
    CLONE_NEWUSER,
    CLONE_NEWUTS,
)
from .cloning import Clone

__all__ = ["Chroot", "Container", "Inject", "setns"]

StdioSpec: TypeAlias = str | os.PathLike[str] | int | IO[Any] | bool | None
"""A path (opened in the child), an fd, or an object with ``fileno()``;
None/False leave the stream alone."""

# The seed's six namespaces, user first (pyspaces' args_aliases order).
_NAMESPACES: tuple[tuple[str, str, int], ...] = (
    ("newuser", "user", CLONE_NEWUSER),
    ("newipc", "ipc", CLONE_NEWIPC),
    ("newuts", "uts", CLONE_NEWUTS),
    ("newnet", "net", CLONE_NEWNET),
    ("newpid", "pid", CLONE_NEWPID),
    ("newns", "mnt", CLONE_NEWNS),
)


def _flag_arg(name: str, alias: str, a: bool | None, b: bool | None) -> bool | None:
    for n, v in ((name, a), (alias, b)):
        if v is not None and not isinstance(v, bool):
            raise TypeError(f"{n} must be True, False or None, not {type(v).__name__}")
    if a is not None and b is not None and a != b:
        raise ValueError(f"{name}={a} and {alias}={b} contradict each other")
    return a if a is not None else b


def _check_stdio(name: str, value: object) -> None:
    if value is None or value is False:
        return
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a path, an fd or a file object, not True")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{name}: negative fd {value}")
        return
    if isinstance(value, (str, os.PathLike)):
        return
    if callable(getattr(value, "fileno", None)):
        return
    raise TypeError(f"{name} must be a path, an fd or a file object, not {type(value).__name__}")


def _check_path(name: str, value: object) -> None:
    if value is not None and not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name} must be a path (str or os.PathLike), not {type(value).__name__}")


class Container(multiprocessing.Process):
    """A ``multiprocessing.Process`` started in new namespaces (pyspaces' ``Container``).

    Namespaces: ``newuser``/``user``, ``newpid``/``pid``, ``newns``/``mnt``,
    ``newnet``/``net``, ``newuts``/``uts``, ``newipc``/``ipc`` (True, False
    or None), and ``all=True`` for all six except those set to False; more
    flags through ``flags``. ``uid_map``/``gid_map``/``map_zero`` take every
    format of :func:`aiospaces.idmap.parse_map`. Bad arguments raise
    ``TypeError``/``ValueError`` naming the argument, here in ``__init__``.

    >>> c = Container(target=print, args=("hi",), all=True, map_zero=True)  # doctest: +SKIP
    >>> c.start(); c.join(); c.exitcode
    0
    """

    # Process.start() calls self._Popen(self); a class is not bound like a
    # function would be, so Clone(self) is what runs. (typeshed types _Popen oddly.)
    _Popen = Clone  # type: ignore[assignment]

    def __init__(
        self,
        group: None = None,
        target: Callable[..., object] | None = None,
        name: str | None = None,
        args: Iterable[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        daemon: bool | None = None,
        flags: int = 0,
        all: bool = False,
        newuser: bool | None = None,
        user: bool | None = None,
        newpid: bool | None = None,
        pid: bool | None = None,
        newns: bool | None = None,
        mnt: bool | None = None,
        newnet: bool | None = None,
        net: bool | None = None,
        newuts: bool | None = None,
        uts: bool | None = None,
        newipc: bool | None = None,
        ipc: bool | None = None,
        uid_map: idmap.MapSpec = "",
        gid_map: idmap.MapSpec = "",
        map_zero: bool = False,
        rootdir: str | os.PathLike[str] | None = None,
        workdir: str | os.PathLike[str] | None = None,
        stdin: StdioSpec = None,
        stdout: StdioSpec = None,
        stderr: StdioSpec = None,
        proc: str = "/proc",
    ) -> None:
        clone_flags = validate_flags(flags, field="flags")
        if not isinstance(all, bool):
            raise TypeError(f"all must be a bool, not {type(all).__name__}")
        given = {
            "newuser": (newuser, user),
            "newipc": (newipc, ipc),
            "newuts": (newuts, uts),
            "newnet": (newnet, net),
            "newpid": (newpid, pid),
            "newns": (newns, mnt),
        }
        for long, alias, bit in _NAMESPACES:
            value = _flag_arg(long, alias, *given[long])
            if value or (value is None and all):
                clone_flags |= bit
        clone_flags = validate_flags(clone_flags, field="flags")
        if not isinstance(map_zero, bool):
            raise TypeError(f"map_zero must be a bool, not {type(map_zero).__name__}")
        # Parse and check the maps now (ValueError/TypeError/PermissionError
        # naming uid_map/gid_map); Clone checks them again at start().
        plan = idmap.plan_maps(uid_map, gid_map, map_zero)
        if plan is not None and not clone_flags & CLONE_NEWUSER:
            raise ValueError(
                "uid_map/gid_map/map_zero need a new user namespace: pass newuser=True "
                "(or all=True, or CLONE_NEWUSER in flags)"
            )
        if not isinstance(proc, str):
            raise TypeError(f"proc must be a str path, not {type(proc).__name__}")
        _check_path("rootdir", rootdir)
        _check_path("workdir", workdir)
        if rootdir is not None and not os.path.isdir(rootdir):
            raise ValueError(f"rootdir {os.fspath(rootdir)!r} is not a directory")
        for sname, svalue in (("stdin", stdin), ("stdout", stdout), ("stderr", stderr)):
            _check_stdio(sname, svalue)
        if workdir is None:
            # The seed's default: "/" inside a new root, else the caller's cwd.
            workdir = "/" if rootdir else os.getcwd()
        super().__init__(group, target, name, tuple(args), dict(kwargs or {}), daemon=daemon)
        # Clone reads these five from __dict__ (the seed's contract).
        self.clone_flags = clone_flags
        self.uid_map = uid_map
        self.gid_map = gid_map
        self.map_zero = map_zero
        self.proc = proc
        self.rootdir = None if rootdir is None else os.fspath(rootdir)
        self.workdir = os.fspath(workdir)
        self.stdio: tuple[StdioSpec, StdioSpec, StdioSpec] = (stdin, stdout, stderr)

    # -- child side: runs inside the new namespaces --------------------------

    def run(self) -> None:
        """Set the child up (stdio, chroot, chdir), then run ``target``.

        Hook order (the seed's ``runup``): preup, chtty, chroot, chdir,
        postup (exceptup on error), then preexec, target, postexec
        (exceptexec on error).
        """
        try:
            self.preup()
            self.chtty()
            self.chroot()
            self.chdir()
        except BaseException:
            self.exceptup()
            raise
        finally:
            self.postup()
        try:
            self.preexec()
            super().run()
        except BaseException:
            self.exceptexec()
            raise
        finally:
            self.postexec()

    def chtty(self) -> None:
        """Point fds 0/1/2 (and ``sys.std*``) at ``stdin``/``stdout``/``stderr``."""
        for fd, spec in enumerate(self.stdio):
            if spec is None or spec is False:
                continue
            if isinstance(spec, (str, os.PathLike)):
                mode = os.O_RDONLY if fd == 0 else os.O_WRONLY | os.O_CREAT | os.O_APPEND
                src = os.open(spec, mode | os.O_CLOEXEC, 0o666)
                owned = True
            elif isinstance(spec, int):
                src, owned = spec, False
            else:
                src, owned = spec.fileno(), False
            stream = (sys.stdin, sys.stdout, sys.stderr)[fd]
            if stream is not None and fd:
                stream.flush()
            if src != fd:
                os.dup2(src, fd)  # dup2'd fd is inheritable: an exec'd program keeps it
            if owned:
                os.close(src)
            # Rebind sys.std* to the new fds: multiprocessing replaced sys.stdin
            # with /dev/null, and a test runner's sys.stdout may not write to fd 1.
            # The new streams live as long as the child (hence the noqa).
            if fd == 0:
                sys.stdin = open(0, closefd=False)  # noqa: SIM115
            elif fd == 1:
                sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
            else:
                sys.stderr = open(2, "w", closefd=False, errors="backslashreplace")  # noqa: SIM115

    def chroot(self) -> None:
        """``chdir(rootdir)`` then ``chroot(rootdir)``, if a root is set."""
        if self.rootdir:
            os.chdir(self.rootdir)
            os.chroot(self.rootdir)

    def chdir(self) -> None:
        """Move to ``workdir`` (inside the new root, if any)."""
        if self.workdir != os.getcwd():
            os.chdir(self.workdir)

    def preup(self) -> None:
        """Hook: first thing in the child (the seed's)."""

    def postup(self) -> None:
        """Hook: after the set-up steps, even when one failed."""

    def exceptup(self) -> None:
        """Hook: a set-up step raised."""

    def preexec(self) -> None:
        """Hook: just before ``target``."""

    def postexec(self) -> None:
        """Hook: after ``target``, even when it raised."""

    def exceptexec(self) -> None:
        """Hook: ``target`` raised."""


class Chroot(Container):
    """A :class:`Container` in new user and mount namespaces, chrooted into ``path``.

    The working directory becomes ``workdir`` (default ``/``) inside the new
    root. The seed's signature: ``Chroot(path, target, args, kwargs, **container_kwargs)``.

    >>> Chroot("/srv/root", os.execv, ("/bin/sh", ["sh", "-c", "ls /"])).start()  # doctest: +SKIP
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        target: Callable[..., object],
        args: Iterable[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        **container_kwargs: Any,
    ) -> None:
        _check_path("path", path)
        if path is None:
            raise TypeError("path must be a path (str or os.PathLike), not None")
        if not callable(target):
            raise TypeError(f"target must be callable, not {type(target).__name__}")
        container_kwargs["rootdir"] = path
        container_kwargs["newuser"] = True
        container_kwargs["newns"] = True
        super().__init__(target=target, args=args, kwargs=kwargs, **container_kwargs)


# --- entering namespaces: Inject and setns (pyspaces.process.Inject, pyspaces.setns) --------

# nsenter's order, user first: joining it grants the capabilities for the rest.
_SETNS_ORDER: tuple[tuple[str, str, str, int], ...] = (
    ("user", "newuser", "user", CLONE_NEWUSER),
    ("ipc", "newipc", "ipc", CLONE_NEWIPC),
    ("uts", "newuts", "uts", CLONE_NEWUTS),
    ("net", "newnet", "net", CLONE_NEWNET),
    ("pid", "newpid", "pid", CLONE_NEWPID),
    ("mnt", "newns", "mnt", CLONE_NEWNS),
)
NsSpec: TypeAlias = bool | str | None
"""True (the target's namespace), a namespace file path, or None/False."""


def _ns_plan(args: tuple[str, ...], kwargs: dict[str, Any]) -> list[tuple[str, str, int]]:
    """``[(name, file, flag)]`` from pyspaces' ``*args``/``**kwargs`` (``all`` by default)."""
    names = {n for n, *_ in _SETNS_ORDER} | {a for _, a, *_ in _SETNS_ORDER} | {"all"}
    for a in args:
        if a not in names:
            raise ValueError(f"unknown namespace {a!r}")
    for k in kwargs:
        if k not in names:
            raise TypeError(f"unknown namespace keyword {k!r}")
    all_ns = (not args and not kwargs) or "all" in args or bool(kwargs.get("all"))
    out = []
    for name, alias, file, flag in _SETNS_ORDER:
        value: NsSpec = None
        for key in (name, alias):
            if key in args:
                value = True
            if kwargs.get(key) is not None:
                value = kwargs[key]
        if value is None and all_ns:
            value = True
        if value is False or value is None:
            continue
        if not isinstance(value, (bool, str)):
            raise TypeError(f"{name} must be True, False, None or a namespace file path")
        out.append((name, value if isinstance(value, str) else file, flag))
    return out


def _enter_files(target_pid: int | str, proc: str, plan: list[tuple[str, str, int]]) -> list[str]:
    """Join each namespace of ``plan`` (skipping those we are already in)."""
    from ._linux import setns as _setns  # noqa: PLC0415

    entered = []
    for name, file, flag in plan:
        path = file if file.startswith("/") else f"{proc}/{target_pid}/ns/{file}"
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            if os.fstat(fd).st_ino == os.stat(f"/proc/self/ns/{name}").st_ino:
                continue  # already there (joining one's own user namespace is EINVAL)
            try:
                _setns(fd, flag)
            except OSError as exc:
                raise OSError(exc.errno, f"setns {name}: {exc.strerror}", path) from None
            entered.append(name)
        finally:
            os.close(fd)
    return entered


@contextlib.contextmanager
def setns(
    target_pid: int | str,
    parent_pid: int | str = 0,
    proc: str = "/proc",
    *args: str,
    **kwargs: NsSpec,
) -> Iterator[None]:
    """Run the ``with`` body in the namespaces of ``target_pid`` (pyspaces' ``setns``).

    Namespaces as in pyspaces: names in ``args`` (``"net"``, ``"newnet"``,
    ..., ``"all"``) or keywords set to True or to a namespace file; none
    given means all six. On leaving, the namespaces of ``parent_pid``
    (default: this process, as it was on entry) are joined again.

    Unlike the seed, every requested namespace is joined (the seed stopped
    after the first), errors raise ``OSError`` naming the namespace, and the
    originals are opened before anything changes. The kernel's rules still
    hold: a multithreaded process cannot join a user namespace, joining a
    pid namespace affects only the children forked inside the block, and a
    user namespace once joined cannot be left (it is not restored).

    >>> with setns(child.pid, "uts"):  # doctest: +SKIP
    ...     socket.gethostname()
    """
    plan = _ns_plan(args, dict(kwargs))
    back_pid = parent_pid or "self"
    originals = []
    try:
        for name, _file, flag in plan:
            if name != "user":
                fd = os.open(f"{proc}/{back_pid}/ns/{name}", os.O_RDONLY | os.O_CLOEXEC)
                originals.append((name, fd, flag))
        _enter_files(target_pid, proc, plan)
        yield
    finally:
        from ._linux import setns as _setns  # noqa: PLC0415

        try:
            for name, fd, flag in reversed(originals):
                try:
                    _setns(fd, flag)
                except OSError as exc:
                    raise OSError(exc.errno, f"setns {name} (restoring): {exc.strerror}") from None
        finally:
            for _name, fd, _flag in originals:
                os.close(fd)


class Inject(Container):
    """A :class:`Container` that runs ``target`` in the namespaces of ``target_pid``.

    pyspaces' ``Inject``: namespace keywords as for :func:`setns`
    (``all`` by default). Unlike the seed, joining the pid namespace gives a
    process that really lives in it: the child forks once more after the
    setns and the grandchild runs ``target`` while the child relays signals
    and the exit status (see :mod:`aiospaces._enter`).

    >>> p = Inject(first.pid, target=print, args=("inside",), uts=True)  # doctest: +SKIP
    >>> p.start(); p.join()
    """

    def __init__(
        self,
        target_pid: int | str,
        target: Callable[..., object],
        args: Iterable[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        proc: str = "/proc",
        *nsargs: str,
        **pkwargs: Any,
    ) -> None:
        if not callable(target):
            raise TypeError(f"target must be callable, not {type(target).__name__}")
        ns_keys = {n for n, *_ in _SETNS_ORDER} | {a for _, a, *_ in _SETNS_ORDER} | {"all"}
        nskw = {k: pkwargs.pop(k) for k in list(pkwargs) if k in ns_keys}
        self.ns_plan = _ns_plan(tuple(nsargs), nskw)
        self.target_pid = target_pid
        super().__init__(target=target, args=args, kwargs=kwargs, proc=proc, **pkwargs)

    def preup(self) -> None:
        """Join the namespaces first thing in the child (then fork for pid)."""
        from ._enter import ForkIntoPidns  # noqa: PLC0415

        entered = _enter_files(self.target_pid, self.proc, self.ns_plan)
        if "pid" in entered:
            ForkIntoPidns().run()
