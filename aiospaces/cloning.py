"""``Clone``: the seed's synchronous primitive, API-compatible with ``pyspaces.cloning``.

A :mod:`multiprocessing` Popen that creates the child with ``clone3`` (plus
a pidfd) in new namespaces, writes its uid/gid maps while it waits on a
pipe, then lets it run ``process_obj._bootstrap()``::

    import multiprocessing
    from aiospaces.cloning import Clone, CLONE_NEWUSER, CLONE_NEWPID

    class P(multiprocessing.Process):
        _Popen = Clone
        clone_flags = 0

    p = P(target=os.getpid)
    p.clone_flags = CLONE_NEWUSER | CLONE_NEWPID   # read from p.__dict__
    p.map_zero = True
    p.start(); p.join()

Differences from the seed, all on purpose:

* ``sentinel`` is the child's **pidfd**, not the pipe's read end: it becomes
  readable when the child exits (not when every holder of a pipe end has
  closed it), so :func:`multiprocessing.connection.wait` works. It stays
  open after the child is reaped, so a sentinel number held by the caller
  never starts naming an unrelated fd, and is closed by :meth:`Clone.close`
  (``Process.close()`` calls it) or when the ``Clone`` is garbage
  collected. The seed never closed its sentinel: one fd leaked per spawn.
* Both pipe ends are closed in the parent once the child has its "go";
  ``pipe_fd`` keeps the (closed) numbers for compatibility.
* Maps are parsed and checked before the child exists (``ValueError``/
  ``TypeError``/``PermissionError``), and maps without ``CLONE_NEWUSER`` are
  refused then instead of failing on ``/proc/PID/uid_map``.
* Signals go through the pidfd: no pid-reuse race.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import traceback
from multiprocessing import popen_fork, util
from typing import Any

from . import idmap
from ._errors import SpawnError
from ._linux import clone_child, pidfd_send_signal, set_pdeathsig, validate_flags, waitid_pidfd
from ._linux.constants import (
    CLONE_CHILD_CLEARTID,
    CLONE_CHILD_SETTID,
    CLONE_CLEAR_SIGHAND,
    CLONE_DETACHED,
    CLONE_FILES,
    CLONE_FS,
    CLONE_INTO_CGROUP,
    CLONE_IO,
    CLONE_NEWCGROUP,
    CLONE_NEWIPC,
    CLONE_NEWNET,
    CLONE_NEWNS,
    CLONE_NEWPID,
    CLONE_NEWTIME,
    CLONE_NEWUSER,
    CLONE_NEWUTS,
    CLONE_PARENT,
    CLONE_PARENT_SETTID,
    CLONE_PIDFD,
    CLONE_PTRACE,
    CLONE_SETTLS,
    CLONE_SIGHAND,
    CLONE_SYSVSEM,
    CLONE_THREAD,
    CLONE_UNTRACED,
    CLONE_VFORK,
    CLONE_VM,
    SIGCHLD,
    SIGKILL,
    STACK_SIZE,
)

__all__ = [
    "CLONE_CHILD_CLEARTID",
    "CLONE_CHILD_SETTID",
    "CLONE_CLEAR_SIGHAND",
    "CLONE_DETACHED",
    "CLONE_FILES",
    "CLONE_FS",
    "CLONE_INTO_CGROUP",
    "CLONE_IO",
    "CLONE_NEWCGROUP",
    "CLONE_NEWIPC",
    "CLONE_NEWNET",
    "CLONE_NEWNS",
    "CLONE_NEWPID",
    "CLONE_NEWTIME",
    "CLONE_NEWUSER",
    "CLONE_NEWUTS",
    "CLONE_PARENT",
    "CLONE_PARENT_SETTID",
    "CLONE_PIDFD",
    "CLONE_PTRACE",
    "CLONE_SETTLS",
    "CLONE_SIGHAND",
    "CLONE_SYSVSEM",
    "CLONE_THREAD",
    "CLONE_UNTRACED",
    "CLONE_VFORK",
    "CLONE_VM",
    "SIGCHLD",
    "SIGKILL",
    "STACK_SIZE",
    "Clone",
]


def _close_fd(fd: int) -> None:
    with contextlib.suppress(OSError):  # already closed by someone else
        os.close(fd)


class Clone(popen_fork.Popen):
    """A ``multiprocessing`` Popen whose child lives in new namespaces.

    Reads ``clone_flags``, ``uid_map``, ``gid_map``, ``map_zero`` and ``proc``
    from ``process_obj.__dict__`` (the seed's contract). Raises
    ``ValueError``/``TypeError`` for bad flags or maps before any process
    exists; :class:`~aiospaces.SpawnError` (an ``OSError``) when clone fails
    or when a map cannot be written — then the child has been killed with
    SIGKILL and reaped, and the error names the map file.

    >>> class P(multiprocessing.Process):  # doctest: +SKIP
    ...     _Popen = Clone
    >>> p = P(target=print, args=("hi",)); p.clone_flags = CLONE_NEWUSER
    >>> p.start(); p.join(); p.exitcode
    0
    """

    pid: int
    pidfd: int
    sentinel: int
    pipe_fd: tuple[int, int]
    process_obj: Any

    def __init__(self, process_obj: Any) -> None:
        self.pid = 0
        self.pidfd = -1
        self._go_fd = -1
        super().__init__(process_obj)  # flushes stdio, then calls _launch

    # -- parent side --------------------------------------------------------

    def _launch(self, process_obj: Any) -> None:
        attrs = process_obj.__dict__
        flags = validate_flags(attrs.get("clone_flags", 0), field="clone_flags")
        proc = attrs.get("proc", "/proc")
        if not isinstance(proc, str):
            raise TypeError(f"proc must be a str path, not {type(proc).__name__}")
        plan = idmap.plan_maps(
            attrs.get("uid_map", ""), attrs.get("gid_map", ""), attrs.get("map_zero", False)
        )
        if plan is not None and not flags & CLONE_NEWUSER:
            raise ValueError(
                "uid_map/gid_map/map_zero need a new user namespace: "
                "add CLONE_NEWUSER to clone_flags"
            )
        self.process_obj = process_obj
        self.pipe_fd = os.pipe()  # close-on-exec: a child that execs drops them
        try:
            pid, pidfd = clone_child(flags)
        except BaseException:
            os.close(self.pipe_fd[0])
            os.close(self.pipe_fd[1])
            raise
        if pid == 0:
            self._child_entry()  # never returns
        self.pid, self.pidfd, self.sentinel = pid, pidfd, pidfd
        self._go_fd = self.pipe_fd[1]
        os.close(self.pipe_fd[0])
        self.finalizer = util.Finalize(self, _close_fd, (pidfd,))
        try:
            if plan is not None:
                idmap.write_maps(pid, plan, proc=proc)
        except BaseException:
            self._abort()
            self.close()
            raise
        self._release_child()

    def _release_child(self) -> None:
        """Give the child its "go": EOF on the pipe (the seed's protocol)."""
        if self._go_fd >= 0:
            fd, self._go_fd = self._go_fd, -1
            os.close(fd)

    def _abort(self) -> None:
        """Kill the child with SIGKILL, reap it, drop the go pipe."""
        if self.returncode is None and self.pidfd >= 0:
            with contextlib.suppress(ProcessLookupError):
                pidfd_send_signal(self.pidfd, SIGKILL)
            self.returncode = waitid_pidfd(self.pidfd, block=True)
        if self._go_fd >= 0:
            fd, self._go_fd = self._go_fd, -1
            os.close(fd)

    def poll(self, flag: int = os.WNOHANG) -> int | None:
        """The returncode (negative signal number if killed), reaping the
        child if it has exited; None while it runs. ``flag=0`` blocks."""
        if self.returncode is None and self.pidfd >= 0:
            try:
                rc = waitid_pidfd(self.pidfd, block=not flag & os.WNOHANG)
            except ChildProcessError:
                return None  # reaped by someone else: nothing more to learn
            if rc is not None:
                self.returncode = rc
        return self.returncode

    def _send_signal(self, sig: int) -> None:
        if self.returncode is None and self.pidfd >= 0:
            with contextlib.suppress(ProcessLookupError):  # exited, not yet reaped
                pidfd_send_signal(self.pidfd, sig)

    def update_map(self, mapping: str, map_file: str) -> None:
        """Write ``mapping`` (commas become newlines) to ``map_file`` in one write.

        On failure the child is killed with SIGKILL and reaped, and
        :class:`~aiospaces.SpawnError` (an ``OSError``) naming ``map_file``
        is raised, as in the seed.

        >>> clone.update_map("0 1000 1,1 1001 1", f"/proc/{clone.pid}/uid_map")  # doctest: +SKIP
        """
        if not isinstance(mapping, str):
            raise TypeError(f"mapping must be a str, not {type(mapping).__name__}")
        data = mapping.replace(",", "\n").encode()
        step = os.path.basename(map_file)
        if step not in ("uid_map", "gid_map", "setgroups"):
            step = "update_map"
        try:
            fd = os.open(map_file, os.O_WRONLY | os.O_CLOEXEC)
            try:
                written = os.write(fd, data)
            finally:
                os.close(fd)
            if written != len(data):
                raise OSError(errno.EIO, f"short write ({written} of {len(data)} bytes)")
        except OSError as exc:
            self._abort()
            raise SpawnError(
                exc.errno or errno.EIO,
                f"cannot write {map_file}: {exc.strerror}",
                map_file,
                step=step,
            ) from exc

    def close(self) -> None:
        """Close the pidfd (the sentinel); the child must have been reaped.

        Raises ``ValueError`` while it runs: closing then would leave a
        zombie nobody can reap without ``waitpid(-1)``.
        """
        if self.pidfd >= 0 and self.poll() is None:
            raise ValueError(
                f"cannot close Clone of running child {self.pid}: join or kill it first"
            )
        self._release_child()
        if self.finalizer is not None:
            self.finalizer()  # closes the pidfd once; later calls do nothing
        self.pidfd = -1

    @staticmethod
    def thread_is_spawning() -> bool:
        """The old ``multiprocessing.forking`` hook: never spawning here."""
        return False

    def __repr__(self) -> str:
        state = "running" if self.returncode is None else f"returncode={self.returncode}"
        return f"<{type(self).__name__} pid={self.pid} {state}>"

    # -- child side ---------------------------------------------------------

    def _child_entry(self) -> None:
        """Run :meth:`child`; whatever happens, leave with ``os._exit``.

        Returning or raising would run the parent's code (its ``finally``
        blocks, its event loop) a second time in the child.
        """
        code = 1
        try:
            self.child()
        except SystemExit as exc:  # pragma: no cover - _bootstrap handles it
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            try:
                traceback.print_exc()
                sys.stderr.flush()
            except BaseException:  # pragma: no cover - stderr is gone
                pass
        finally:
            os._exit(code)

    def child(self) -> None:
        """The child's start: wait for "go", run ``process_obj._bootstrap()``, exit.

        ``PR_SET_PDEATHSIG`` makes the child die with the parent's thread.
        EOF on the pipe means the maps are written; data instead raises
        ``RuntimeError`` (the seed's contract). Ends with ``os._exit``.
        """
        set_pdeathsig(SIGKILL)
        os.close(self.pipe_fd[1])
        try:
            data = os.read(self.pipe_fd[0], 1)
        finally:
            os.close(self.pipe_fd[0])
        if data:
            raise RuntimeError("Failure in child: parent doesn't close its descriptor")
        if "random" in sys.modules:  # the parent's random state is now shared: reseed
            sys.modules["random"].seed()
        code = self.process_obj._bootstrap()
        util._flush_std_streams()  # type: ignore[attr-defined]
        os._exit(code)
