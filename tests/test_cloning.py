"""Clone and compat.Container/Chroot against real processes and namespaces."""

from __future__ import annotations

import errno
import json
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import child_pids, open_fds

from aiospaces import NamespaceUnavailable, SpawnError, cloning
from aiospaces._linux import constants as C
from aiospaces._linux import mount
from aiospaces.cloning import Clone
from aiospaces.compat import Chroot, Container
from aiospaces.idmap import parse_map

IS_ROOT = os.geteuid() == 0
NS_FLAGS = {
    "pid": C.CLONE_NEWPID,
    "mnt": C.CLONE_NEWNS,
    "net": C.CLONE_NEWNET,
    "uts": C.CLONE_NEWUTS,
    "ipc": C.CLONE_NEWIPC,
    "cgroup": C.CLONE_NEWCGROUP,
    "time": C.CLONE_NEWTIME,
}
ALL_NS = ["user", *NS_FLAGS]

# Every clone and fork of this process, counted by the hooks clone3 runs
# (PyOS_AfterFork_Parent) exactly as os.fork() does.
_forks = [0]
os.register_at_fork(after_in_parent=lambda: _forks.__setitem__(0, _forks[0] + 1))


def ns_ids() -> dict[str, int]:
    return {
        name: os.stat(f"/proc/self/ns/{name}").st_ino
        for name in ALL_NS
        if os.path.exists(f"/proc/self/ns/{name}")
    }


def run_in(fn: Callable[[], Any], timeout: float = 30, **kwargs: Any) -> tuple[int | None, Any]:
    """Run ``fn`` in a Container(**kwargs); return (exitcode, fn's JSON result)."""
    r, w = os.pipe()

    def target() -> None:
        os.close(r)
        data = json.dumps(fn()).encode()
        os.write(w, data)
        os.close(w)

    c = Container(target=target, **kwargs)
    try:
        c.start()
    finally:
        os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    c.join(timeout)
    code = c.exitcode
    c.close()
    return code, json.loads(data) if data else None


def read_overflow(kind: str) -> int:
    return int(Path(f"/proc/sys/kernel/overflow{kind}").read_text())


# --- the seed README example -------------------------------------------------------


def _ps_target(w: int) -> Callable[[], None]:
    def ps() -> None:
        mount(None, "/", None, C.MS_REC | C.MS_PRIVATE)
        os.execvp("sh", ["sh", "-c", "mount -t proc proc /proc; ps ax; exit"])

    return ps


@pytest.mark.userns
def test_readme_example_ps_sees_shell_as_pid_1() -> None:
    r, w = os.pipe()
    c = Container(
        target=_ps_target(w), newuser=True, newpid=True, newns=True, map_zero=True, stdout=w
    )
    c.start()
    os.close(w)
    with os.fdopen(r) as f:
        out = f.read()
    c.join(30)
    assert c.exitcode == 0, out
    c.close()
    lines = out.strip().splitlines()
    assert lines[0].split()[:2] == ["PID", "TTY"]
    procs = {int(line.split()[0]): line.split(None, 4)[4] for line in lines[1:]}
    assert procs[1].startswith("sh -c mount -t proc proc /proc")
    # only the shell and ps: nothing of the host
    assert len(procs) == 2 and "ps ax" in procs.values(), out
    # the proc mount stayed in the child's mount namespace
    assert os.path.exists(f"/proc/{os.getpid()}")


def test_example_script_runs() -> None:
    root = Path(__file__).resolve().parent.parent
    from conftest import USERNS

    if not USERNS:
        pytest.skip("unprivileged user namespaces are disabled on this host")
    res = subprocess.run(
        [sys.executable, str(root / "examples" / "clone_ps.py")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert " 1 " in res.stdout and "sh -c mount" in res.stdout and "ps ax" in res.stdout


# --- namespaces -----------------------------------------------------------------------


def _check_namespaces(flags: int, new: set[str], **kwargs: Any) -> None:
    outside = ns_ids()
    code, inside = run_in(ns_ids, flags=flags, **kwargs)
    assert code == 0
    for name, ino in outside.items():
        if name in new:
            assert inside[name] != ino, f"{name} namespace was not created"
        else:
            assert inside[name] == ino, f"{name} namespace changed without being asked"


@pytest.mark.root
@pytest.mark.parametrize("name", list(NS_FLAGS))
def test_each_namespace_flag_alone(name: str) -> None:
    if not os.path.exists(f"/proc/self/ns/{name}"):
        pytest.skip(f"kernel without {name} namespaces")
    _check_namespaces(NS_FLAGS[name], {name})


@pytest.mark.userns
@pytest.mark.parametrize("name", list(NS_FLAGS))
def test_each_namespace_flag_with_a_user_namespace(name: str) -> None:
    if not os.path.exists(f"/proc/self/ns/{name}"):
        pytest.skip(f"kernel without {name} namespaces")
    _check_namespaces(C.CLONE_NEWUSER | NS_FLAGS[name], {"user", name})


@pytest.mark.userns
def test_all_namespaces_combined() -> None:
    flags = C.CLONE_NEWUSER
    for bit in NS_FLAGS.values():
        flags |= bit
    _check_namespaces(flags, set(ALL_NS), map_zero=True)


@pytest.mark.userns
def test_all_true_is_the_seeds_six_and_false_excludes() -> None:
    c = Container(target=print, all=True, map_zero=True, net=False)
    six = C.CLONE_NEWUSER | C.CLONE_NEWPID | C.CLONE_NEWNS | C.CLONE_NEWUTS | C.CLONE_NEWIPC
    assert c.clone_flags == six
    _check_namespaces(0, {"user", "pid", "mnt", "uts", "ipc"}, all=True, net=False, map_zero=True)


@pytest.mark.userns
def test_pid_namespace_child_is_pid_1() -> None:
    code, pid = run_in(os.getpid, newuser=True, newpid=True)
    assert (code, pid) == (0, 1)


# --- id maps -----------------------------------------------------------------------------


def _ids_inside() -> dict[str, Any]:
    return {
        "uid": os.getuid(),
        "gid": os.getgid(),
        "uid_map": Path("/proc/self/uid_map").read_text().split(),
        "gid_map": Path("/proc/self/gid_map").read_text().split(),
        "setgroups": Path("/proc/self/setgroups").read_text().strip(),
    }


def _expect(spec: Any, field: str) -> tuple[list[str], int]:
    m = parse_map(spec, field=field)
    assert m is not None
    own = os.getuid() if field == "uid_map" else os.getgid()
    inside = m.to_inside(own)
    return m.render().decode().split(), read_overflow(field[0] + "id") if inside is None else inside


OWN_FORMATS: list[Callable[[int], Any]] = [
    lambda i: True,
    lambda i: i,
    str,
    lambda i: f"0 {i} 1",
    lambda i: f"5 {i} 1",
    lambda i: [i],
    lambda i: [str(i)],
    lambda i: [f"7 {i} 1"],
    lambda i: parse_map(f"0 {i} 1"),
]


@pytest.mark.userns
@pytest.mark.parametrize("fmt", OWN_FORMATS)
def test_own_id_maps_in_every_format(fmt: Callable[[int], Any]) -> None:
    uid_spec, gid_spec = fmt(os.getuid()), fmt(os.getgid())
    code, got = run_in(_ids_inside, newuser=True, uid_map=uid_spec, gid_map=gid_spec)
    assert code == 0
    for field, spec in (("uid_map", uid_spec), ("gid_map", gid_spec)):
        lines, inside_id = _expect(spec, field)
        assert got[field] == lines
        assert got[field[0] + "id"] == inside_id
    assert got["setgroups"] == ("allow" if IS_ROOT else "deny")


@pytest.mark.root
@pytest.mark.parametrize(
    "spec",
    [
        "0 1000 1",
        "0 1000 1,1 1001 1",
        "0 1000 1\n1 0 1",
        "1000,0",
        [1000, 1001, 0],
        ["0 100000 65536", "65536 0 1"],
        2000,
        "0 0 4294967294",
    ],
)
def test_privileged_maps_in_every_format(spec: Any) -> None:
    code, got = run_in(_ids_inside, newuser=True, uid_map=spec, gid_map=spec)
    assert code == 0
    for field in ("uid_map", "gid_map"):
        lines, inside_id = _expect(spec, field)
        assert got[field] == lines
        assert got[field[0] + "id"] == inside_id


@pytest.mark.userns
def test_map_zero_maps_own_ids_to_root() -> None:
    code, got = run_in(_ids_inside, newuser=True, map_zero=True)
    assert code == 0
    assert (got["uid"], got["gid"]) == (0, 0)
    assert got["uid_map"] == ["0", str(os.getuid()), "1"]
    assert got["gid_map"] == ["0", str(os.getgid()), "1"]


# --- the Process API over Clone ------------------------------------------------------------


def _sleep_forever() -> None:
    while True:
        time.sleep(10)


@pytest.mark.userns
def test_process_api_is_alive_join_terminate_kill_close() -> None:
    c = Container(target=_sleep_forever, newuser=True)
    c.start()
    assert c.is_alive()
    c.join(0.05)
    assert c.exitcode is None and c.is_alive()
    # the sentinel is the pidfd: not ready while the child runs
    assert multiprocessing.connection.wait([c.sentinel], 0.05) == []
    with pytest.raises(ValueError, match="still running"):
        c.close()
    c.terminate()
    assert multiprocessing.connection.wait([c.sentinel], 10) == [c.sentinel]
    c.join(10)
    assert c.exitcode == -signal.SIGTERM and not c.is_alive()
    c.close()

    c = Container(target=_sleep_forever, newuser=True, newpid=True)
    c.start()
    c.terminate()  # PID 1 of a pid namespace ignores SIGTERM without a handler
    c.join(0.3)
    assert c.is_alive()
    c.kill()
    c.join(10)
    assert c.exitcode == -signal.SIGKILL
    # still a valid fd after reaping: a waiter holding the number sees "ready"
    assert multiprocessing.connection.wait([c.sentinel], 0) == [c.sentinel]
    c.close()


@pytest.mark.userns
@pytest.mark.parametrize(
    ("fn", "code"),
    [(lambda: sys.exit(3), 3), (lambda: 1 / 0, 1), (lambda: None, 0), (lambda: os._exit(7), 7)],
)
def test_exitcodes_follow_multiprocessing(fn: Callable[[], Any], code: int) -> None:
    c = Container(target=fn, newuser=True, stderr=os.devnull)
    c.start()
    c.join(10)
    assert c.exitcode == code
    c.close()


@pytest.mark.userns
def test_no_fd_or_child_left_after_many_spawns() -> None:
    fds, kids = open_fds(), child_pids()
    for _ in range(20):
        c = Container(target=os.getpid, newuser=True, newpid=True, map_zero=True)
        c.start()
        c.join(10)
        assert c.exitcode == 0
        c.close()
    assert open_fds() == fds
    assert child_pids() == kids


@pytest.mark.userns
def test_clone_members_and_constants() -> None:
    for name in (
        "STACK_SIZE",
        "SIGCHLD",
        "SIGKILL",
        "CLONE_VM",
        "CLONE_IO",
        "CLONE_DETACHED",
        "CLONE_NEWCGROUP",
        "CLONE_NEWTIME",
        "CLONE_PIDFD",
        "CLONE_INTO_CGROUP",
        "CLONE_CLEAR_SIGHAND",
        "CLONE_NEWUSER",
    ):
        assert getattr(cloning, name) == getattr(C, name)
    assert Clone.thread_is_spawning() is False
    c = Container(target=_sleep_forever, newuser=True)
    c.start()
    popen = c._popen  # type: ignore[attr-defined]
    assert isinstance(popen, Clone)
    assert popen.process_obj is c and popen.pid == c.pid and popen.sentinel == popen.pidfd
    assert len(popen.pipe_fd) == 2
    assert popen.poll() is None and popen.returncode is None
    assert popen.wait(0.01) is None
    popen.kill()
    assert popen.wait() == -signal.SIGKILL == popen.poll()
    assert "returncode=-9" in repr(popen)
    c.join()
    c.close()


# --- documented errors ----------------------------------------------------------------------


class _Proc(multiprocessing.Process):
    _Popen = Clone  # type: ignore[assignment]


@pytest.mark.parametrize(
    "flag",
    [
        C.CLONE_VM,
        C.CLONE_THREAD,
        C.CLONE_FILES,
        C.CLONE_FS,
        C.CLONE_VFORK,
        C.CLONE_SETTLS,
        0x11,
        -1,
    ],
)
def test_bad_flags_raise_value_error_before_any_process(flag: int) -> None:
    with pytest.raises(ValueError, match="flags"):
        Container(target=print, flags=flag)
    p = _Proc(target=print)
    p.clone_flags = flag  # type: ignore[attr-defined]
    forks = _forks[0]
    with pytest.raises(ValueError, match="clone_flags"):
        p.start()
    assert _forks[0] == forks


@pytest.mark.parametrize(
    ("attr", "value", "exc"),
    [
        ("uid_map", "0 1000 0", ValueError),
        ("gid_map", "garbage", ValueError),
        ("uid_map", 1.5, TypeError),
        ("gid_map", "0 1 5,2 9 1", ValueError),
        ("map_zero", "yes", TypeError),
        ("proc", 3, TypeError),
    ],
)
def test_bad_maps_raise_before_any_process(attr: str, value: Any, exc: type[Exception]) -> None:
    with pytest.raises(exc, match=attr):
        Container(target=print, newuser=True, **{attr: value})
    p = _Proc(target=print)
    p.clone_flags = C.CLONE_NEWUSER  # type: ignore[attr-defined]
    setattr(p, attr, value)
    forks = _forks[0]
    with pytest.raises(exc):
        p.start()
    assert _forks[0] == forks


def test_maps_without_a_user_namespace_are_refused() -> None:
    with pytest.raises(ValueError, match="CLONE_NEWUSER"):
        Container(target=print, newpid=True, map_zero=True)
    p = _Proc(target=print)
    p.uid_map = True  # type: ignore[attr-defined]
    forks = _forks[0]
    with pytest.raises(ValueError, match="CLONE_NEWUSER"):
        p.start()
    assert _forks[0] == forks


@pytest.mark.userns
def test_map_write_failure_kills_reaps_and_names_the_file(tmp_path: Path) -> None:
    fds, kids, forks = open_fds(), child_pids(), _forks[0]
    ran = tmp_path / "ran"
    c = Container(target=ran.touch, newuser=True, map_zero=True, proc=str(tmp_path))
    with pytest.raises(OSError) as info:
        c.start()
    assert _forks[0] == forks + 1  # a child was created...
    assert isinstance(info.value, SpawnError) and info.value.step == "uid_map"
    assert info.value.errno == errno.ENOENT
    assert info.value.filename.startswith(f"{tmp_path}/")
    assert info.value.filename.endswith("/uid_map")
    assert open_fds() == fds and child_pids() == kids  # ...and is gone, reaped
    assert not ran.exists()


@pytest.mark.userns
def test_update_map_failure_kills_reaps_and_names_the_file() -> None:
    c = Container(target=_sleep_forever, newuser=True, map_zero=True)
    c.start()
    popen: Clone = c._popen  # type: ignore[attr-defined]
    path = f"/proc/{c.pid}/uid_map"
    with pytest.raises(OSError) as info:  # maps are written once: EPERM
        popen.update_map(f"0 {os.getuid()} 1", path)
    assert info.value.errno == errno.EPERM and info.value.filename == path
    assert popen.returncode == -signal.SIGKILL and c.exitcode == -signal.SIGKILL
    assert not Path(f"/proc/{c.pid}").exists() or c.pid not in child_pids()
    c.close()


@pytest.mark.unprivileged
def test_update_map_unprivileged_other_uid() -> None:
    c = Container(target=_sleep_forever, newuser=True)
    c.start()
    popen: Clone = c._popen  # type: ignore[attr-defined]
    path = f"/proc/{c.pid}/uid_map"
    with pytest.raises(OSError) as info:
        popen.update_map(f"0 {os.getuid() + 1} 1", path)
    assert info.value.errno == errno.EPERM and info.value.filename == path
    assert c.exitcode == -signal.SIGKILL
    c.close()


@pytest.mark.userns
def test_update_map_commas_become_newlines() -> None:
    r, w = os.pipe()

    def target() -> None:
        os.close(w)
        os.read(r, 1)  # wait for the parent to check the map

    c = Container(target=target, newuser=True)
    c.start()
    os.close(r)
    try:
        popen: Clone = c._popen  # type: ignore[attr-defined]
        spec = "0 0 1,1 1 1" if IS_ROOT else f"0 {os.getuid()} 1"
        popen.update_map(spec, f"/proc/{c.pid}/uid_map")
        assert Path(f"/proc/{c.pid}/uid_map").read_text().split() == spec.replace(",", " ").split()
    finally:
        os.close(w)
        c.join(10)
    assert c.exitcode == 0
    c.close()


class _DataClone(Clone):
    """Breaks the handshake: writes data instead of just closing the pipe."""

    def _release_child(self) -> None:
        if self._go_fd >= 0:
            os.write(self._go_fd, b"x")
        super()._release_child()


class _DataContainer(Container):
    _Popen = _DataClone


@pytest.mark.userns
def test_pipe_data_is_a_runtime_error_in_the_child(
    capfd: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    ran = tmp_path / "ran"
    c = _DataContainer(target=ran.touch, newuser=True)
    c.start()
    c.join(10)
    assert c.exitcode == 1
    c.close()
    err = capfd.readouterr().err
    assert "RuntimeError" in err and "doesn't close its descriptor" in err
    assert not ran.exists()


@pytest.mark.unprivileged
def test_clone_failure_is_an_oserror_with_a_hint() -> None:
    fds, kids = open_fds(), child_pids()
    c = Container(target=print, newnet=True)
    with pytest.raises(OSError) as info:
        c.start()
    assert isinstance(info.value, NamespaceUnavailable)
    assert info.value.errno == errno.EPERM and info.value.hint
    assert open_fds() == fds and child_pids() == kids


# --- Container arguments --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "exc", "name"),
    [
        ({"newuser": "yes"}, TypeError, "newuser"),
        ({"pid": 1}, TypeError, "pid"),
        ({"newuser": True, "user": False}, ValueError, "newuser"),
        ({"all": "x"}, TypeError, "all"),
        ({"flags": "x"}, TypeError, "flags"),
        ({"stdin": 1.5}, TypeError, "stdin"),
        ({"stdout": True}, TypeError, "stdout"),
        ({"stderr": -2}, ValueError, "stderr"),
        ({"rootdir": 5}, TypeError, "rootdir"),
        ({"rootdir": "/nonexistent/root"}, ValueError, "rootdir"),
        ({"workdir": 3.0}, TypeError, "workdir"),
        ({"proc": b"/proc"}, TypeError, "proc"),
        ({"newuser": True, "uid_map": "x y"}, ValueError, "uid_map"),
    ],
)
def test_container_validates_arguments(
    kwargs: dict[str, Any], exc: type[Exception], name: str
) -> None:
    with pytest.raises(exc, match=name):
        Container(target=print, **kwargs)


@pytest.mark.userns
def test_container_stdio_paths_and_workdir(tmp_path: Path) -> None:
    (tmp_path / "in").write_text("hello from stdin\n")
    out, err = tmp_path / "out", tmp_path / "err"

    def target() -> None:
        line = sys.stdin.readline()
        print(line.strip().upper(), os.getcwd())
        print("to stderr", file=sys.stderr)

    c = Container(
        target=target,
        newuser=True,
        stdin=str(tmp_path / "in"),
        stdout=out,
        stderr=str(err),
        workdir=str(tmp_path),
    )
    c.start()
    c.join(10)
    assert c.exitcode == 0
    c.close()
    assert out.read_text() == f"HELLO FROM STDIN {tmp_path}\n"
    assert err.read_text() == "to stderr\n"


def _tiny_root(root: Path) -> None:
    """A root holding /bin/sh and the libraries it links (copied)."""
    sh = os.path.realpath(shutil.which("sh") or "/bin/sh")
    res = subprocess.run(["ldd", sh], capture_output=True, text=True, check=False)
    files = {sh}
    for line in res.stdout.splitlines():
        for word in line.split():
            if word.startswith("/"):
                files.add(word)
    for f in files:
        dest = root / f.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, dest)
    (root / "bin").mkdir(exist_ok=True)
    if not (root / "bin" / "sh").exists():
        os.symlink(sh, root / "bin" / "sh")
    (root / "work").mkdir()
    (root / "marker").write_text("tiny root\n")


@pytest.mark.userns
def test_chroot_runs_inside_the_new_root(tmp_path: Path) -> None:
    if shutil.which("ldd") is None:
        pytest.skip("ldd is needed to build a tiny root")
    root = tmp_path / "root"
    _tiny_root(root)
    r, w = os.pipe()

    def target() -> None:
        os.write(w, json.dumps([sorted(os.listdir("/")), os.getcwd()]).encode() + b"\n")
        os.execv("/bin/sh", ["sh", "-c", 'read x < /marker; echo "$x in $PWD"'])

    c = Chroot(str(root), target, workdir="/work", stdout=w)
    c.start()
    os.close(w)
    with os.fdopen(r) as f:
        first, second = f.read().splitlines()
    c.join(10)
    assert c.exitcode == 0
    c.close()
    listing, cwd = json.loads(first)
    assert "marker" in listing and "proc" not in listing and cwd == "/work"
    assert second == "tiny root in /work"


@pytest.mark.userns
def test_chroot_default_workdir_is_root(tmp_path: Path) -> None:
    code, cwd = run_in(os.getcwd, newuser=True, newns=True, rootdir=str(tmp_path))
    assert (code, cwd) == (0, "/")
    with pytest.raises(TypeError, match="target"):
        Chroot(str(tmp_path), "not callable")  # type: ignore[arg-type]
