"""Escape attempts from inside ``Sandbox.untrusted()``: each must fail, and
each test names the fence that stopped it.

The code under attack runs in the sandbox (fn mode through ``spawn``, exec
mode through ``run``/``create_process``) and reports what happened as JSON
(``result_format="json"``: nothing from inside is unpickled). Where a test
can, it also switches the named fence off (a *control*) and shows that the
attempt then gets further: the test proves that fence, not another one,
held. Every check of the host's side is made from outside, through /proc.

SECURITY.md lists these tests and what each proves.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import os
import shutil
import signal
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from limits_helpers import no_cgroup_leftovers, status  # noqa: F401  (autouse fixture)

from aiospaces import Bind, ChildKilled, Sandbox, create_process, run, spawn
from aiospaces.cgroups import available
from aiospaces.hardening import seccomp_available

pytestmark = [
    pytest.mark.userns,
    pytest.mark.skipif(not seccomp_available(), reason="pyseccomp/libseccomp missing"),
]

CGROUP_LIMITS = available().limits
PTRACE_ATTACH = 16
PTRACE_DETACH = 17
CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
MS_RDONLY = 1
MS_REMOUNT = 32
MS_BIND = 4096


def untrusted(**overrides: Any) -> Sandbox:
    """The preset under test, with a timeout so a test can never hang."""
    overrides.setdefault("timeout", 30)
    return Sandbox.untrusted(**overrides)


async def inside(fn: Callable[..., Any], *args: Any, **overrides: Any) -> Any:
    """Run ``fn(*args)`` in ``untrusted(**overrides)``; its JSON result."""
    child = await spawn(fn, args=args, sandbox=untrusted(**overrides), result_format="json")
    return await child.result()


async def shell(script: str, **overrides: Any) -> tuple[int, str]:
    """Run ``sh -c script`` in the exec-mode preset; (returncode, stdout+stderr)."""
    overrides.setdefault("python", False)
    done = await run(["sh", "-c", script], sandbox=untrusted(**overrides), capture_output=True)
    return done.returncode, (done.stdout or b"").decode() + (done.stderr or b"").decode()


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _call(name: str, *args: Any) -> int:
    """A libc call in the child: 0 or the errno it failed with."""
    fn = getattr(_libc(), name)
    return 0 if fn(*args) != -1 else ctypes.get_errno()


def _errno_of(action: Callable[[], object]) -> int | str:
    try:
        action()
    except OSError as exc:
        return exc.errno or -1
    return "ok"


def host_pids_with(marker: str) -> list[int]:
    """Pids on the host whose command line contains ``marker`` (read from outside)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{name}/cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline:
            found.append(int(name))
    return found


async def gone(marker: str, within: float = 2.0) -> list[int]:
    """Wait until no host process carries ``marker``; return the survivors."""
    deadline = time.monotonic() + within
    while (left := host_pids_with(marker)) and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.02)  # /proc offers nothing to wait on
    return left


async def started(marker: str, within: float = 5.0) -> list[int]:
    """Wait until a host process carries ``marker``; return those."""
    deadline = time.monotonic() + within
    while not (found := host_pids_with(marker)) and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    return found


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _create(path: str) -> None:
    with open(path, "w"):
        pass


# -- 1. host pids and the parent's /proc ---------------------------------------------------


def _look_around(parent: int) -> dict[str, Any]:
    return {
        "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
        "me": os.getpid(),
        "ppid": os.getppid(),
        "parent_proc": _errno_of(lambda: os.stat(f"/proc/{parent}")),
        "parent_environ": _errno_of(lambda: _read(f"/proc/{parent}/environ")),
        "host_init_root": sorted(os.listdir("/proc/1/root")),
        "root": sorted(os.listdir("/")),
    }


async def test_host_pids_and_parent_proc_are_invisible_pid_namespace_and_fresh_proc() -> None:
    parent = os.getpid()
    got = await inside(_look_around, parent)
    # Fence: a new pid namespace and a /proc mounted for it. The sandbox is
    # PID 1, its parent is outside the namespace (ppid 0), no host pid exists.
    assert got["me"] == 1 and got["ppid"] == 0, "pid namespace: the sandbox must be PID 1"
    assert got["pids"] == [1], f"pid namespace + fresh /proc: saw host pids {got['pids']}"
    assert parent == 1 or got["parent_proc"] == errno.ENOENT, "the parent's /proc is visible"
    assert got["parent_environ"] == errno.ENOENT
    # /proc/1/root is the sandbox's own root, not the host's.
    assert got["host_init_root"] == got["root"]


async def test_host_pids_invisible_exec_mode() -> None:
    rc, out = await shell(
        f"ls /proc | grep -E '^[0-9]+$' | sort -n | tr '\\n' ' '; "
        f"test -e /proc/{os.getpid()} && echo PARENT-VISIBLE; exit 0"
    )
    assert rc == 0, out
    pids = [int(p) for p in out.split()]
    # Fence: pid namespace (aiospaces' init is 1; sh, ls, grep... follow).
    assert pids and pids[0] == 1 and max(pids) < 100, f"host pids visible: {pids}"
    assert "PARENT-VISIBLE" not in out


# -- 2. signal or ptrace the parent -----------------------------------------------------


def _signal_everyone(parent: int, parent_pgid: int) -> dict[str, Any]:
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # kill(0) also reaches ourselves
    out: dict[str, Any] = {}
    out["kill_parent"] = _errno_of(lambda: os.kill(parent, signal.SIGUSR1))
    out["kill_parent_group"] = _errno_of(lambda: os.killpg(parent_pgid, signal.SIGUSR1))
    out["kill_0"] = _errno_of(lambda: os.kill(0, signal.SIGUSR1))
    out["kill_-1"] = _errno_of(lambda: os.kill(-1, signal.SIGUSR1))
    out["pidfd_parent"] = _errno_of(lambda: os.pidfd_open(parent))
    out["pgid"] = os.getpgid(0)
    out["sid"] = os.getsid(0)
    return out


async def test_signals_cannot_reach_the_parent_pid_namespace_and_own_session() -> None:
    received: list[int] = []
    old = signal.signal(signal.SIGUSR1, lambda signum, frame: received.append(signum))
    try:
        got = await inside(_signal_everyone, os.getpid(), os.getpgid(0))
        await asyncio.sleep(0.05)
    finally:
        signal.signal(signal.SIGUSR1, old)
    # Fence: the pid namespace. Our pid and process group do not exist
    # inside (ESRCH); kill(-1) reaches every process *of the namespace*
    # but the caller (none here: ESRCH); kill(0) reaches the sandbox's own
    # group (new_session=True: it leads its own session and group).
    assert got["kill_parent"] == errno.ESRCH, "pid namespace: the parent's pid must not exist"
    assert got["kill_parent_group"] == errno.ESRCH
    assert got["pidfd_parent"] == errno.ESRCH
    assert got["kill_-1"] == errno.ESRCH, "kill(-1) must reach only the sandbox"
    assert got["kill_0"] == "ok" and got["pgid"] == got["sid"] == 1
    assert received == [], "a signal from the sandbox reached the parent"


async def test_signals_cannot_reach_the_parent_exec_mode() -> None:
    _, out = await shell(f"kill -USR1 {os.getpid()} && echo SENT; kill -USR1 -1 && echo ALL")
    assert "SENT" not in out and "ALL" not in out, f"pid namespace failed: {out}"


def _ptrace(parent: int) -> dict[str, Any]:
    libc = _libc()
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
    kid = os.fork()
    if kid == 0:
        time.sleep(30)
        os._exit(0)
    try:
        out = {
            "own_child": _call("ptrace", PTRACE_ATTACH, kid, None, None),
            "parent": _call("ptrace", PTRACE_ATTACH, parent, None, None),
            "vm_readv": _errno_of(lambda: _process_vm_readv(libc, kid)),
        }
        if out["own_child"] == 0:
            libc.ptrace(PTRACE_DETACH, kid, None, None)
        return out
    finally:
        os.kill(kid, signal.SIGKILL)
        os.waitpid(kid, 0)


def _process_vm_readv(libc: ctypes.CDLL, pid: int) -> None:
    class Iov(ctypes.Structure):
        _fields_ = (("base", ctypes.c_void_p), ("len", ctypes.c_size_t))

    buf = ctypes.create_string_buffer(8)
    local = Iov(ctypes.cast(buf, ctypes.c_void_p), 8)
    remote = Iov(ctypes.cast(buf, ctypes.c_void_p), 8)
    fn = libc.process_vm_readv
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_void_p,
                   ctypes.c_ulong, ctypes.c_ulong]  # fmt: skip
    if fn(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0) == -1:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


async def test_ptrace_denied_by_seccomp_even_for_own_child() -> None:
    got = await inside(_ptrace, os.getpid())
    # Fence: seccomp "default" (EPERM before the kernel even looks the pid
    # up) — it denies attaching to the sandbox's own child too.
    assert got["own_child"] == errno.EPERM, "seccomp must deny ptrace"
    assert got["parent"] == errno.EPERM
    assert got["vm_readv"] == errno.EPERM, "seccomp must deny process_vm_readv"


async def test_ptrace_control_without_seccomp_own_child_works_parent_invisible() -> None:
    # Control: without seccomp, tracing its own child succeeds — so the test
    # above shows seccomp at work; the parent stays out of reach (pid ns).
    got = await inside(_ptrace, os.getpid(), seccomp=None)
    assert got["own_child"] == 0, got
    assert got["parent"] == errno.ESRCH, "pid namespace: the parent must not exist"


# -- 3. write a read-only bind -----------------------------------------------------------


def _write_everything(path: str) -> dict[str, Any]:
    def append() -> None:
        with open(path, "a") as f:
            f.write("pwned")

    return {
        "append": _errno_of(append),
        "create": _errno_of(lambda: _create(os.path.join(os.path.dirname(path), "new"))),
        "chmod": _errno_of(lambda: os.chmod(path, 0o777)),
        "rename": _errno_of(lambda: os.rename(path, path + ".x")),
        "unlink": _errno_of(lambda: os.unlink(path)),
        "usr": _errno_of(lambda: _create("/usr/pwned")),
        "remount_rw": _call(
            "mount", None, os.path.dirname(path).encode(), None, MS_REMOUNT | MS_BIND, None
        ),
    }


def _ro_data(tmp_path: Path) -> tuple[Path, Bind]:
    data = tmp_path / "ro"
    data.mkdir()
    (data / "file").write_text("original")
    return data, Bind(str(data), "/data", readonly=True)


async def test_read_only_bind_cannot_be_written(tmp_path: Path) -> None:
    data, bind = _ro_data(tmp_path)
    got = await inside(_write_everything, "/data/file", mounts=(bind,))
    # Two fences: the read-only bind (EROFS) and Landlock (EACCES: "/" is
    # read-only for it), whichever the kernel checks first; the remount
    # back to rw is refused by seccomp (mount: EPERM).
    for what in ("append", "create", "chmod", "rename", "unlink", "usr"):
        assert got[what] in (errno.EROFS, errno.EACCES), f"{what}: {got[what]}"
    assert got["remount_rw"] == errno.EPERM, "seccomp must deny mount"
    assert (data / "file").read_text() == "original" and sorted(os.listdir(data)) == ["file"]


async def test_read_only_bind_alone_holds_erofs(tmp_path: Path) -> None:
    data, bind = _ro_data(tmp_path)
    got = await inside(_write_everything, "/data/file", mounts=(bind,), landlock=None)
    # Without Landlock, the bind itself answers: EROFS.
    for what in ("append", "create", "chmod", "rename", "unlink", "usr"):
        assert got[what] == errno.EROFS, f"read-only bind: {what}: {got[what]}"
    assert (data / "file").read_text() == "original"


async def test_read_only_bind_exec_mode(tmp_path: Path) -> None:
    data, bind = _ro_data(tmp_path)
    _, out = await shell(
        "echo pwned > /data/file; echo pwned > /usr/x; rm -f /data/file",
        mounts=(bind,),
        landlock=None,
    )
    assert out.count("Read-only file system") == 3, out
    assert (data / "file").read_text() == "original"


# -- 4. read host files outside the binds ----------------------------------------------------


def _read_host(paths: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {p: _errno_of(lambda p=p: _read(p)) for p in paths}
    out["dotdot"] = os.stat("/..").st_ino == os.stat("/").st_ino
    out["chroot"] = _errno_of(lambda: os.chroot("/tmp"))
    return out


async def test_host_files_outside_the_binds_do_not_exist(tmp_path: Path) -> None:
    secret = tmp_path / f"secret-{uuid.uuid4().hex}"
    secret.write_text("host secret")
    paths = [str(secret), "/etc/shadow", "/etc/passwd", "/etc/hostname", "/root/.bashrc",
             "/home", "/var/log", "/run"]  # fmt: skip
    got = await inside(_read_host, paths)
    # Fence: the mount namespace with a new root (pivot_root, old root
    # detached): nothing outside the binds is mounted, so each path is ENOENT
    # (not EACCES: there is nothing to refuse). ".." of "/" is "/".
    for p in paths:
        assert got[p] == errno.ENOENT, f"new root: {p} -> {got[p]}"
    assert got["dotdot"], "'..' climbed out of the new root"
    assert got["chroot"] == errno.EPERM, "seccomp must deny chroot (a classic escape)"


async def test_host_files_outside_the_binds_exec_mode(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("host secret")
    _, out = await shell(f"cat {secret} /etc/shadow /etc/passwd; ls /home /root; cd /..; ls")
    assert "host secret" not in out and "root:" not in out
    assert out.count("No such file or directory") == 5, out


# -- 5. a host loopback server -----------------------------------------------------------------


def _connect(port: int, abstract: str) -> dict[str, Any]:
    def tcp() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(("127.0.0.1", port))

    def unix() -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect("\0" + abstract)

    return {"tcp": _errno_of(tcp), "unix": _errno_of(unix)}


@pytest.mark.parametrize(
    ("overrides", "expected", "fence"),
    [
        ({}, errno.EPERM, "seccomp no-network: no AF_INET socket at all"),
        ({"seccomp": "default"}, errno.ENETUNREACH, "net namespace, loopback down: no route"),
        (
            {"seccomp": "default", "network": "loopback"},
            errno.ECONNREFUSED,
            "net namespace: its own 127.0.0.1, not the host's",
        ),
    ],
    ids=["preset", "no-seccomp-network", "own-loopback"],
)
async def test_host_loopback_server_is_unreachable(
    overrides: dict[str, Any], expected: int, fence: str
) -> None:
    abstract = f"aiospaces-escape-{uuid.uuid4().hex}"
    with (
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server,
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as userver,
    ):
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        server.setblocking(False)
        userver.bind("\0" + abstract)
        userver.listen(8)
        userver.setblocking(False)
        got = await inside(_connect, server.getsockname()[1], abstract, **overrides)
        assert got["tcp"] == expected, f"{fence}: {got['tcp']}"
        # Abstract AF_UNIX names belong to the net namespace: not reachable either.
        assert got["unix"] == errno.ECONNREFUSED, f"net namespace (abstract unix): {got['unix']}"
        with pytest.raises(BlockingIOError):
            server.accept()
        with pytest.raises(BlockingIOError):
            userver.accept()


# -- 6. privileges through a setuid binary --------------------------------------------------------


@pytest.mark.root
async def test_setuid_binary_gives_nothing_no_new_privs(tmp_path: Path) -> None:
    # A setuid-root copy of id(1): it prints "euid=0" when the bit works.
    suid = tmp_path / "suid"
    suid.mkdir()
    os.chmod(tmp_path, 0o755)
    shutil.copy("/usr/bin/id", suid / "id")
    os.chown(suid / "id", 0, 0)
    os.chmod(suid / "id", 0o4755)
    common: dict[str, Any] = {
        "mounts": (Bind(str(suid), "/suid", readonly=True),),
        "uid_map": "0 0 1, 1000 1000 1",
        "gid_map": "0 0 1, 1000 1000 1",
        "uid": 1000,
        "gid": 1000,
    }
    script = "/suid/id; grep -E '^(Uid|CapEff|NoNewPrivs)' /proc/self/status"
    rc, out = await shell(script, **common)
    # Fence: no_new_privs (the binds keep the host's suid flag; execve
    # ignores set-user-ID bits and file capabilities under no_new_privs).
    assert rc == 0, out
    assert "euid=" not in out and out.startswith("uid=1000"), f"no_new_privs: {out}"
    assert "CapEff:\t0000000000000000" in out and "NoNewPrivs:\t1" in out
    # Control: without no_new_privs (and the fences that need it) the bit works.
    _, out = await shell(script, no_new_privs=False, seccomp=None, landlock=None, **common)
    assert "euid=0" in out, f"control: the setuid bit should work without no_new_privs: {out}"


async def test_host_setuid_binaries_give_nothing() -> None:
    _, out = await shell(
        "for b in su passwd mount chfn; do /usr/bin/$b --help </dev/null >/dev/null 2>&1; done;"
        "su -c 'echo ROOTSHELL' root </dev/null; mount -t tmpfs none /tmp && echo MOUNTED;"
        "id -u; stat -c '%u %A' /usr/bin/su;"
        "grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status"
    )
    assert "ROOTSHELL" not in out and "MOUNTED" not in out, out
    # Fences: no_new_privs, and an empty bounding set: even a uid-0 execve
    # gains no capability.
    assert "CapEff:\t0000000000000000" in out and "CapBnd:\t0000000000000000" in out, out
    assert "NoNewPrivs:\t1" in out
    if os.geteuid() != 0:
        # Unprivileged: host root is not mapped into the sandbox's user
        # namespace, so the kernel would not honour its setuid bits anyway.
        assert "65534 -rws" in out, out


# -- 7. mount a filesystem ------------------------------------------------------------------------


def _mount() -> dict[str, Any]:
    return {
        "tmpfs": _call("mount", b"none", b"/tmp", b"tmpfs", 0, None),
        "proc": _call("mount", b"proc", b"/tmp", b"proc", 0, None),
        "umount_proc": _call("umount2", b"/proc", 2),
        "capeff": status("CapEff"),
    }


async def test_mount_denied_by_seccomp() -> None:
    got = await inside(_mount)
    assert got["tmpfs"] == errno.EPERM and got["proc"] == errno.EPERM, "seccomp denies mount"
    assert got["umount_proc"] == errno.EPERM, "seccomp denies umount2"


async def test_mount_denied_by_capabilities_without_seccomp() -> None:
    got = await inside(_mount, seccomp=None)
    # Second fence: every capability is dropped (CAP_SYS_ADMIN of the
    # sandbox's own user namespace included).
    assert int(got["capeff"], 16) == 0
    assert got["tmpfs"] == errno.EPERM and got["proc"] == errno.EPERM, "no CAP_SYS_ADMIN"


async def test_mount_exec_mode() -> None:
    _, out = await shell("mount -t tmpfs none /tmp && echo MOUNTED; unshare -U true && echo NS")
    assert "MOUNTED" not in out and "NS" not in out, out


# -- 8. a new user namespace to regain capabilities --------------------------------------------


def _nested_userns() -> dict[str, Any]:
    out: dict[str, Any] = {"unshare": _call("unshare", CLONE_NEWUSER | CLONE_NEWNS)}
    if out["unshare"] == 0:
        out["capeff"] = status("CapEff")
        # Full capabilities in the nested namespace; now use them.
        out["remount_usr_rw"] = _call("mount", None, b"/usr", None, MS_REMOUNT | MS_BIND, None)
        out["write_usr"] = _errno_of(lambda: _create("/usr/pwned"))
        out["host_file"] = _errno_of(lambda: _read("/etc/shadow"))
        out["net"] = _errno_of(lambda: socket.socket(socket.AF_INET).close())
    return out


async def test_new_user_namespace_denied_by_seccomp() -> None:
    # The preset forbids it: unshare/clone with any CLONE_NEW* flag is EPERM.
    got = await inside(_nested_userns)
    assert got["unshare"] == errno.EPERM, "seccomp must deny unshare(CLONE_NEWUSER)"


async def test_nested_user_namespace_without_seccomp_stays_confined() -> None:
    # Control: with seccomp off the kernel lets the sandbox nest a user
    # namespace and hands it every capability — over that namespace only.
    got = await inside(_nested_userns, seccomp=None, network="loopback")
    if got["unshare"] != 0:  # pragma: no cover - a kernel that forbids nesting
        pytest.skip(f"nested user namespaces refused here: errno {got['unshare']}")
    assert int(got["capeff"], 16) != 0
    # The read-only binds were made by a more privileged namespace: their
    # flags are locked (MNT_LOCK_READONLY), a remount rw is EPERM.
    assert got["remount_usr_rw"] == errno.EPERM, "locked mount flags must hold"
    assert got["write_usr"] in (errno.EROFS, errno.EACCES)
    assert got["host_file"] == errno.ENOENT, "the host tree is still detached"


# -- 9. memory and pids beyond the limits ---------------------------------------------------


def _hog(mib: int) -> str:
    chunks = []
    try:
        for _ in range(mib // 16):
            chunks.append(bytearray(16 << 20))  # zero-filled: touched
    except MemoryError:
        return "MemoryError"
    return f"allocated {len(chunks) * 16} MiB"


def _fork_bomb() -> dict[str, Any]:
    made = 0
    try:
        while made < 1000:
            if os.fork() == 0:
                time.sleep(60)
                os._exit(0)
            made += 1
    except BlockingIOError:  # EAGAIN: pids.max
        return {"made": made, "stopped": "EAGAIN"}
    return {"made": made, "stopped": "never"}


@pytest.mark.skipif("memory_max" not in CGROUP_LIMITS, reason="no cgroup memory controller here")
async def test_memory_beyond_the_cgroup_limit_is_oom_killed_and_reported() -> None:
    sb = untrusted(memory_max="64M")
    assert sb.memory_max == 64 << 20
    child = await spawn(_hog, args=(512,), sandbox=sb, result_format="json")
    # Fence: the cgroup memory limit (no swap): the OOM killer, reported.
    with pytest.raises(ChildKilled) as info:
        await child.result()
    assert info.value.reason == "oom" and child.oom_killed


@pytest.mark.skipif("memory_max" in CGROUP_LIMITS, reason="cgroups enforce memory here")
async def test_memory_beyond_the_limit_rlimit_as_fallback() -> None:
    # Unprivileged without a delegated cgroup: the preset turns memory_max
    # into RLIMIT_AS; an allocation past it fails inside (MemoryError).
    sb = untrusted(memory_max="256M")
    assert sb.memory_max is None
    assert any(r.limit_name == "AS" for r in sb.rlimits)  # type: ignore[union-attr]
    got = await inside(_hog, 1024, memory_max="256M")
    assert got == "MemoryError", f"RLIMIT_AS: {got}"


@pytest.mark.skipif("pids_max" not in CGROUP_LIMITS, reason="no cgroup pids controller here")
async def test_fork_bomb_stops_at_pids_max() -> None:
    got = await inside(_fork_bomb, pids_max=16)
    # Fence: the cgroup pids controller (EAGAIN); the pid namespace then
    # takes every forked child down with PID 1.
    assert got["stopped"] == "EAGAIN" and got["made"] < 16, got


@pytest.mark.skipif("pids_max" in CGROUP_LIMITS, reason="cgroups enforce pids here")
def test_unprivileged_preset_leaves_pids_unlimited_documented() -> None:
    # Not a fence: without a cgroup the preset has no per-sandbox pid limit
    # (RLIMIT_NPROC counts every process of the user). SECURITY.md says so.
    assert untrusted().pids_max is None


# -- 10. keep running after the sandbox ends ------------------------------------------------------


def _daemonize(marker: str) -> str:
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            os.execvp("sleep", ["sleep", marker])
        os._exit(0)
    os.wait()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for p in os.listdir("/proc"):
            if p.isdigit():
                try:
                    if marker.encode() in _read(f"/proc/{p}/cmdline"):
                        return "daemon running"
                except OSError:
                    pass
        time.sleep(0.01)
    return "no daemon"


def _marker() -> str:
    return f"999.{uuid.uuid4().int % 10**9:09d}"  # a unique, valid sleep(1) argument


async def test_double_forked_daemon_dies_with_the_sandbox_fn_mode() -> None:
    marker = _marker()
    got = await inside(_daemonize, marker)
    assert got == "daemon running"
    # Fence: the pid namespace: when its PID 1 exits, the kernel kills every
    # process left in it, setsid or not.
    assert await gone(marker) == [], "a daemon outlived the sandbox"


async def test_double_forked_daemon_dies_when_the_sandbox_is_killed() -> None:
    marker = _marker()
    proc = await create_process(
        ["sh", "-c", f"setsid sh -c 'sleep {marker} &' ; echo started; exec sleep 1000"],
        sandbox=untrusted(python=False),
        stdout=-1,
    )
    async with proc:
        assert proc.stdout is not None
        assert await proc.stdout.readline() == b"started\n"
        assert await started(marker), "the daemon never started: the test proves nothing"
        proc.kill()
        await proc.wait()
    assert await gone(marker) == [], "pid namespace: a daemon outlived the killed sandbox"


async def test_double_forked_daemon_dies_at_the_sandbox_timeout() -> None:
    marker = _marker()

    def daemon_then_hang(marker: str) -> None:
        _daemonize(marker)
        time.sleep(60)

    child = await spawn(
        daemon_then_hang, args=(marker,), sandbox=untrusted(timeout=1.5), result_format="json"
    )
    assert await started(marker), "the daemon never started: the test proves nothing"
    with pytest.raises(TimeoutError):
        await child.result()
    assert child.timed_out
    assert await gone(marker) == [], "timeout: a daemon outlived the sandbox"
