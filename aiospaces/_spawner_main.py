"""The spawner process: clones fn-mode children on behalf of a supervisor.

Started by :class:`aiospaces.Spawner` as ``python -m aiospaces._spawner_main
FD`` (a fresh, small interpreter: posix_spawn, so the supervisor's own size
never matters). It never runs user code itself; it only imports the module
of each ``fn`` (so later children find it loaded) and forks.

Protocol on the ``SOCK_SEQPACKET`` socket ``FD``, one pickled tuple per
message (both ends are this library, same user: pickles are fine here, and
nothing from a sandbox ever reaches this socket — children close it first):

    supervisor → spawner
      ("init", sys_path, environ, cwd)
      ("clone", flags, plan_fields, fnref, work, fmt, wait_running, env, cwd)
                                   + fds [channel end, (cgroup dir)]
    spawner → supervisor
      ("ready", pid)
      ("cloned", pid)              + fds [pidfd]       (replies, in order)
      ("failed", record)                               (a reply)
      ("exit", pid, returncode)                        (when reaped)

The exit statuses are relayed because the kernel refuses ``CLONE_PARENT``
together with ``CLONE_NEWUSER``/``CLONE_NEWPID``: the sandboxes are our
children, not the supervisor's. The supervisor still holds each pidfd, so
signals go to the right process and never to a recycled pid.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import signal
import socket
import sys
from typing import Any

from . import _child
from ._body import _fn_body
from ._linux import clone_child, set_pdeathsig

MAX_MSG = 1 << 20  # a request: the pickled plan and work (the args travel here)
MAX_FDS = 4


def _recv(sock: socket.socket) -> tuple[Any, list[int]] | None:
    """One message and its fds; None at EOF; raises BlockingIOError."""
    fds: list[int] = []
    data, anc, _flags, _addr = sock.recvmsg(MAX_MSG, socket.CMSG_SPACE(MAX_FDS * 4))
    for level, kind, payload in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            n = len(payload) - len(payload) % 4
            fds.extend(int.from_bytes(payload[i : i + 4], sys.byteorder) for i in range(0, n, 4))
    if not data:
        for fd in fds:
            os.close(fd)
        return None
    return pickle.loads(data), fds


def _send(sock: socket.socket, msg: tuple[Any, ...], fds: tuple[int, ...] = ()) -> None:
    data = pickle.dumps(msg, pickle.HIGHEST_PROTOCOL)
    if fds:
        socket.send_fds(sock, [data], list(fds))
    else:
        sock.send(data)


def _status(res: os.waitid_result) -> int:
    return res.si_status if res.si_code == os.CLD_EXITED else -res.si_status


def _error_record(exc: BaseException) -> dict[str, Any]:
    return {
        "type": type(exc).__name__,
        "errno": getattr(exc, "errno", None) or 0,
        "strerror": getattr(exc, "strerror", None) or str(exc),
        "step": getattr(exc, "step", None) or "spawner",
        "hint": getattr(exc, "hint", None),
    }


class Server:
    def __init__(self, fd: int) -> None:
        self.sock = socket.socket(fileno=fd)
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        self.children = 0
        self.base_env = dict(os.environ)

    def private_fds(self) -> tuple[int, ...]:
        return (self.sock.fileno(), self.wake_r, self.wake_w)

    def serve(self) -> None:
        # A handler (not SIG_DFL) so the wakeup fd sees SIGCHLD; the children
        # reset it (signal_plan resets every Python-level handler).
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        poller = select.poll()
        poller.register(self.sock.fileno(), select.POLLIN)
        poller.register(self.wake_r, select.POLLIN)
        sock_fd = self.sock.fileno()
        while True:
            for fd, _ev in poller.poll():
                if fd == self.wake_r:
                    with contextlib.suppress(BlockingIOError):
                        while os.read(self.wake_r, 512):
                            pass
                elif fd == sock_fd and not self._drain_requests():
                    return
            self._reap()

    def _drain_requests(self) -> bool:
        """Serve every queued request; False at EOF (the supervisor is gone)."""
        while True:
            try:
                got = _recv_nowait(self.sock)
            except BlockingIOError:
                return True
            except (ConnectionResetError, OSError):
                return False
            if got is None:
                return False
            msg, fds = got
            try:
                if msg[0] == "clone":
                    self._clone(msg, fds)
            finally:
                for fd in fds:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            self._reap()

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
            _send(self.sock, ("exit", res.si_pid, _status(res)))

    def _clone(self, msg: tuple[Any, ...], fds: list[int]) -> None:
        _, flags, fields, fnref, work, fmt, wait_running, env, cwd = msg
        csock = fds[0]
        cgroup_fd = fds[1] if len(fds) > 1 else -1
        try:
            die_with_parent, close_fds, pid1_handlers, new_session, steps = fields
            plan = _child.ChildPlan(
                die_with_parent=die_with_parent,
                close_fds=close_fds,
                new_pidns=_child.new_pidns(flags),
                pid1_handlers=pid1_handlers,
                new_session=new_session,
                steps=pickle.loads(steps) if steps is not None else (),
            )
            if fnref is not None:
                # Import fn's module here, once: every later child finds it
                # loaded (and an import error fails the spawn, not the child).
                pickle.loads(fnref)
            sigplan = _child.signal_plan(plan.pid1_handlers)
            held = _child.hold_signals(sigplan)
            try:
                pid, pidfd = clone_child(flags, cgroup_fd=cgroup_fd)
            finally:
                if os.getpid() == self_pid:
                    _child.release_signals(held)
        except BaseException as exc:
            if os.getpid() != self_pid:  # an exception in the fresh child
                _child.escape_guard(csock)
            _send(self.sock, ("failed", _error_record(exc)))
            return
        if pid == 0:
            try:
                for fd in (*self.private_fds(), *fds[1:]):
                    os.close(fd)
                _child_setup(env, cwd, self.base_env)
                body = _remote_body(work, wait_running, fmt)
            except BaseException:
                _child.escape_guard(csock)
            try:
                _child.child_main(csock, -1, plan, sigplan, body)
            finally:
                os._exit(_child.EXIT_SETUP_FAILED)
        self.children += 1
        try:
            _send(self.sock, ("cloned", pid), (pidfd,))
        finally:
            os.close(pidfd)


def _recv_nowait(sock: socket.socket) -> tuple[Any, list[int]] | None:
    sock.setblocking(False)
    try:
        return _recv(sock)
    finally:
        sock.setblocking(True)


def _child_setup(env: dict[str, str] | None, cwd: str | None, base: dict[str, str]) -> None:
    """Give the child the supervisor's current environment and directory."""
    if env is not None and env != base:
        os.environ.clear()
        os.environ.update(env)
    if cwd is not None:
        os.chdir(cwd)


def _remote_body(work: bytes, wait_running: bool, fmt: str) -> Any:
    def body(sock: int) -> int:
        try:
            fn, args, kwargs = pickle.loads(work)
        except BaseException as exc:  # reported as fn's own exception
            err = exc

            def fn(*a: object, **k: object) -> None:
                raise err

            args, kwargs = (), {}
        return _fn_body(fn, args, kwargs, wait_running, fmt)(sock)

    return body


self_pid = os.getpid()


def main(argv: list[str]) -> int:
    global self_pid
    fd = int(argv[1])
    parent = int(argv[2])
    set_pdeathsig(signal.SIGKILL)
    if os.getppid() != parent:  # the supervisor died before PDEATHSIG was set
        return 1
    # Our own session: the terminal's Ctrl-C is the supervisor's to handle.
    with contextlib.suppress(OSError):
        os.setsid()
    self_pid = os.getpid()
    server = Server(fd)
    got = _recv(server.sock)
    if got is None:
        return 0
    (_init, path, environ, cwd), _ = got
    sys.path[:] = path
    os.environ.clear()
    os.environ.update(environ)
    server.base_env = dict(environ)
    with contextlib.suppress(OSError):
        os.chdir(cwd)
    _send(server.sock, ("ready", os.getpid()))
    server.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
