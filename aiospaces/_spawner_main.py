"""The spawner process: clones fn-mode children on behalf of a supervisor.

Started by :class:`aiospaces.Spawner` (a fresh, small interpreter through
``posix_spawn``, so the supervisor's own size never matters, and without the
package's ``__init__``: see ``_spawner._BOOT``). It never runs user code
itself; it imports the module of each ``fn`` (so later children find it
loaded) and forks.

Protocol on a ``SOCK_SEQPACKET`` socket, one message per datagram (both
ends are this library and the same user; nothing from a sandbox ever
reaches this socket: children close it first)::

    supervisor → spawner
      'N' pickle((sys_path, environ, cwd))      once, first
      'I' pickle(fn)                            import fn's module here
      'C' u64 flags, u8 has_cgroup, u8 pdeathsig, payload
                                                + fds [channel end, (cgroup dir)]
          payload = pickle((plan_fields, pickle(fn), pickle((args, kwargs)),
                            fmt, wait_running, env, cwd)), unpickled by the child only
    spawner → supervisor
      'R' i32 pid                               ready
      'K' i32 pid  + fd [pidfd]                 cloned      (replies to 'C',
      'F' i32 errno                             failed       in order)
      'X' i32 pid, i32 status                   reaped (exit code, or -signal)

The exit statuses are relayed because the kernel refuses ``CLONE_PARENT``
together with ``CLONE_NEWUSER``/``CLONE_NEWPID``: the sandboxes are our
children, not the supervisor's. The supervisor holds each pidfd, so signals
go to the right process and never to a recycled pid.

The loop itself is C (``_fork.serve``) where the extension is built: a
Python loop writes some 160 pages per request, each a copy-on-write fault
while the last child still shares it. The Python loop below is the fallback.
"""

from __future__ import annotations

import contextlib
import gc
import os
import pickle
import select
import signal
import socket
import struct
import sys
from typing import Any, NoReturn

from . import _child
from ._body import _fn_body
from ._linux import clone_child, set_pdeathsig

try:
    from ._linux import _fork as _cfork
except ImportError:  # built without a C compiler: the Python loop
    _cfork = None  # type: ignore[assignment]

MAX_MSG = 1 << 20  # a request: the pickled plan and work (the args travel here)
MAX_FDS = 4
_CLONE_HEAD = struct.Struct("=QBB")
_I32 = struct.Struct("=i")
_EXIT = struct.Struct("=ii")
# Blocked in the spawner for good: SIGCHLD is read from a signalfd (C loop),
# and a child of the spawner starts with these blocked until its handlers
# are set (a PID-1 child would otherwise drop an early SIGTERM).
_BLOCKED = {signal.SIGCHLD, *_child.PID1_EXIT_SIGNALS}


def recv_msg(sock: socket.socket, flags: int = 0) -> tuple[bytes, list[int]]:
    """One datagram and its fds (b"" at EOF)."""
    fds: list[int] = []
    data, anc, _mflags, _addr = sock.recvmsg(
        MAX_MSG, socket.CMSG_SPACE(MAX_FDS * 4), flags | socket.MSG_CMSG_CLOEXEC
    )
    for level, kind, payload in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            n = len(payload) - len(payload) % 4
            fds.extend(int.from_bytes(payload[i : i + 4], sys.byteorder) for i in range(0, n, 4))
    return data, fds


def _send(sock: socket.socket, data: bytes, fds: tuple[int, ...] = ()) -> None:
    if fds:
        socket.send_fds(sock, [data], list(fds))
    else:
        sock.send(data)


class Server:
    def __init__(self, fd: int) -> None:
        self.sock = socket.socket(fileno=fd)
        self.children = 0
        self.base_env: dict[str, str] = dict(os.environ)
        # What a child must undo of our signal state, for a PID-1 child or
        # not: made once the loop's signal state is final (see serve()).
        self.sigplans: dict[bool, _child.SignalPlan] = {}
        self.wake_r = self.wake_w = -1
        # A child that finds this readable right after setting PDEATHSIG
        # knows the spawner died before that (so no signal will come).
        self.self_pidfd = os.pidfd_open(os.getpid())

    def serve(self) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, _BLOCKED)
        # AIOSPACES_SPAWNER_LOOP=python: the fallback loop (its tests use it).
        if _cfork is not None and os.environ.get("AIOSPACES_SPAWNER_LOOP") != "python":
            self.sigplans = {p: _child.signal_plan(p) for p in (False, True)}
            self._serve_c()
        else:
            self._serve_py()

    # -- the C loop -----------------------------------------------------------
    def _serve_c(self) -> None:
        assert _cfork is not None
        while True:
            # Everything alive now is the spawner's for good: out of the
            # collector's sight, so a collection in a child does not walk
            # (and copy) the pages it shares with us.
            gc.freeze()
            got = _cfork.serve(self.sock.fileno(), MAX_MSG, self.self_pidfd)
            if got is None:
                return
            kind, payload, fds = got
            if kind == b"C":
                self._child(payload, fds)
            self._other(kind, payload, fds)

    # -- the Python loop (no C extension) -------------------------------------
    def _serve_py(self) -> None:
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # so the wakeup fd hears it
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
        self.sigplans = {p: _child.signal_plan(p) for p in (False, True)}
        poller = select.poll()
        poller.register(self.sock.fileno(), select.POLLIN)
        poller.register(self.wake_r, select.POLLIN)
        while True:
            for fd, _ev in poller.poll():
                if fd == self.wake_r:
                    with contextlib.suppress(BlockingIOError):
                        while os.read(self.wake_r, 512):
                            pass
                elif not self._drain_py():
                    self._reap()
                    return
            self._reap()

    def _drain_py(self) -> bool:
        while True:
            try:
                data, fds = recv_msg(self.sock, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return True
            except OSError:
                return False
            if not data:
                for fd in fds:
                    os.close(fd)
                return False
            kind, rest = data[:1], data[1:]
            if kind == b"C" and len(rest) >= _CLONE_HEAD.size and fds:
                self._clone_py(rest, fds)
            else:
                self._other(kind, rest, fds)

    def _clone_py(self, rest: bytes, fds: list[int]) -> None:
        flags, has_cgroup, pdeathsig = _CLONE_HEAD.unpack_from(rest)
        cgroup_fd = fds[1] if has_cgroup and len(fds) > 1 else -1
        try:
            try:
                pid, pidfd = clone_child(flags, cgroup_fd=cgroup_fd)
            except OSError as exc:
                _send(self.sock, b"F" + _I32.pack(exc.errno or 0))
                return
            if pid == 0:
                if pdeathsig:
                    set_pdeathsig(pdeathsig)
                    if select.select([self.self_pidfd], [], [], 0)[0]:  # see Server()
                        os._exit(_child.EXIT_PARENT_GONE)
                os.close(self.self_pidfd)
                self._child(rest[_CLONE_HEAD.size :], fds)
            self.children += 1
            try:
                _send(self.sock, b"K" + _I32.pack(pid), (pidfd,))
            finally:
                os.close(pidfd)
        finally:
            for fd in fds:
                os.close(fd)

    def _reap(self) -> None:
        while self.children:
            try:
                res = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG)
            except ChildProcessError:
                self.children = 0
                return
            if res is None:
                return
            self.children -= 1
            rc = res.si_status if res.si_code == os.CLD_EXITED else -res.si_status
            _send(self.sock, b"X" + _EXIT.pack(res.si_pid, rc))

    # -- both loops -----------------------------------------------------------
    def _other(self, kind: bytes, payload: bytes, fds: list[int]) -> None:
        for fd in fds:
            os.close(fd)
        if kind == b"I":
            # Import fn's module here, once, so that every later child finds
            # it loaded. A failure is the child's to report (as fn's error).
            with contextlib.suppress(Exception):
                pickle.loads(payload)

    def _child(self, payload: bytes, fds: list[int]) -> NoReturn:
        """In the fresh child: become the requested sandbox. Never returns."""
        csock = fds[0]
        try:
            for fd in (self.sock.fileno(), self.wake_r, self.wake_w, *fds[1:]):
                if fd >= 0:
                    os.close(fd)
            fields, fnref, work, fmt, wait_running, env, cwd = pickle.loads(payload)
            die_with_parent, close_fds, pid1_handlers, new_session, steps = fields
            plan = _child.ChildPlan(
                die_with_parent=die_with_parent,
                close_fds=close_fds,
                new_pidns=pid1_handlers,
                pid1_handlers=pid1_handlers,
                new_session=new_session,
                steps=pickle.loads(steps) if steps is not None else (),
            )
            if env is not None and env != self.base_env:
                os.environ.clear()
                os.environ.update(env)
            if cwd is not None:
                os.chdir(cwd)
            body = _remote_body(fnref, work, wait_running, fmt)
        except BaseException:
            _child.escape_guard(csock)
        try:
            _child.child_main(
                csock, -1, plan, self.sigplans[pid1_handlers], body, pdeathsig_set=True
            )
        finally:
            os._exit(_child.EXIT_SETUP_FAILED)


def _remote_body(fnref: bytes, work: bytes, wait_running: bool, fmt: str) -> Any:
    def body(sock: int) -> int:
        try:
            fn = pickle.loads(fnref)
            args, kwargs = pickle.loads(work)
        except BaseException as exc:  # reported as fn's own exception
            err = exc

            def fn(*a: object, **k: object) -> None:
                raise err

            args, kwargs = (), {}
        return _fn_body(fn, args, kwargs, wait_running, fmt)(sock)

    return body


def main(argv: list[str]) -> int:
    fd = int(argv[1])
    parent = int(argv[2])
    set_pdeathsig(signal.SIGKILL)
    if os.getppid() != parent:  # the supervisor died before PDEATHSIG was set
        return 1
    # Our own session: the terminal's Ctrl-C is the supervisor's to handle.
    with contextlib.suppress(OSError):
        os.setsid()
    server = Server(fd)
    data, fds = recv_msg(server.sock)
    for extra in fds:
        os.close(extra)
    if data[:1] != b"N":
        return 0
    path, environ, cwd = pickle.loads(data[1:])
    sys.path[:] = path
    os.environ.clear()
    os.environ.update(environ)
    server.base_env = dict(environ)
    with contextlib.suppress(OSError):
        os.chdir(cwd)
    _send(server.sock, b"R" + _I32.pack(os.getpid()))
    server.serve()
    return 0
