"""no_new_privs, capabilities, seccomp and Landlock, checked from inside the child."""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import sys
from pathlib import Path

import pytest
from limits_helpers import no_cgroup_leftovers, status  # noqa: F401  (autouse fixture)

from aiospaces import ChildKilled, Sandbox, SpawnError, run, spawn
from aiospaces.hardening import Landlock, SeccompPolicy, landlock_abi, seccomp_available

SECCOMP = pytest.mark.skipif(not seccomp_available(), reason="pyseccomp/libseccomp missing")
LANDLOCK = pytest.mark.skipif(landlock_abi() == 0, reason="the kernel has no Landlock")
_libc = ctypes.CDLL(None, use_errno=True)


def _privs() -> tuple[str, str, str, str]:
    return status("NoNewPrivs"), status("CapEff"), status("CapPrm"), status("CapBnd")


# --- no_new_privs and capabilities ---------------------------------------------------------


async def test_defaults_without_namespaces() -> None:
    nnp, eff, prm, _ = await (await spawn(_privs, sandbox=Sandbox())).result()
    assert nnp == "1" and int(eff, 16) == 0 and int(prm, 16) == 0


@pytest.mark.userns
async def test_defaults_in_a_user_namespace_drop_everything() -> None:
    nnp, eff, prm, bnd = await (await spawn(_privs, sandbox=Sandbox(namespaces={"user"}))).result()
    assert (nnp, int(eff, 16), int(prm, 16), int(bnd, 16)) == ("1", 0, 0, 0)


@pytest.mark.userns
async def test_keep_caps_keeps_only_those() -> None:
    sb = Sandbox(namespaces={"user", "net"}, keep_caps={"CAP_NET_RAW", "net_admin"})
    _, eff, _, bnd = await (await spawn(_privs, sandbox=sb)).result()
    assert int(eff, 16) == int(bnd, 16) == (1 << 13) | (1 << 12)


@pytest.mark.userns
async def test_keep_caps_all_and_no_new_privs_off_leave_them() -> None:
    sb = Sandbox(namespaces={"user"}, keep_caps="all", no_new_privs=False)
    nnp, eff, _, _ = await (await spawn(_privs, sandbox=sb)).result()
    assert nnp == "0" and int(eff, 16) != 0


@pytest.mark.userns
async def test_kept_caps_survive_execve_in_the_ambient_set() -> None:
    sb = Sandbox(namespaces={"user"}, keep_caps={"sys_chroot"})
    argv = ["grep", "-E", "^Cap(Eff|Amb)", "/proc/self/status"]
    done = await run(argv, sandbox=sb, capture_output=True, check=True)
    kept = b"%016x" % (1 << 18)
    assert done.stdout.split() == [b"CapEff:", kept, b"CapAmb:", kept]


def test_bad_keep_caps() -> None:
    with pytest.raises(ValueError, match="unknown capability 'cap_flying'"):
        Sandbox(keep_caps={"cap_flying"})
    with pytest.raises(TypeError, match="keep_caps must be a set"):
        Sandbox(keep_caps="net_raw")  # type: ignore[arg-type]


# --- seccomp --------------------------------------------------------------------------------


def _ptrace_errno() -> int:
    pid = os.getppid() or 1
    if _libc.ptrace(0x4206, pid, 0, 0) == -1:  # PTRACE_SEIZE
        return ctypes.get_errno()
    return 0


def _unshare_errno(flag: int) -> int:
    if _libc.unshare(flag) == -1:
        return ctypes.get_errno()
    return 0


def _socket_results() -> dict[str, object]:
    out: dict[str, object] = {}
    for name, fam in (
        ("inet", socket.AF_INET),
        ("inet6", socket.AF_INET6),
        ("unix", socket.AF_UNIX),
    ):
        try:
            socket.socket(fam, socket.SOCK_STREAM).close()
            out[name] = "ok"
        except OSError as exc:
            out[name] = exc.errno
    a, b = socket.socketpair()
    a.sendall(b"x")
    out["pair"] = b.recv(1)
    a.close()
    b.close()
    return out


@SECCOMP
@pytest.mark.userns
async def test_default_preset_denies_ptrace_with_eperm() -> None:
    sb = Sandbox(namespaces={"user"}, seccomp="default")
    assert await (await spawn(_ptrace_errno, sandbox=sb)).result() == errno.EPERM
    # and so do new user namespaces (the sandbox's own were made before the filter)
    child = await spawn(_unshare_errno, args=(0x10000000,), sandbox=sb)
    assert await child.result() == errno.EPERM
    assert status("Seccomp") == "0"  # the parent is untouched


@SECCOMP
async def test_default_preset_unprivileged_without_namespaces() -> None:
    sb = Sandbox(seccomp="default")
    assert await (await spawn(_ptrace_errno, sandbox=sb)).result() == errno.EPERM


@SECCOMP
@pytest.mark.userns
async def test_no_network_preset_allows_only_af_unix() -> None:
    sb = Sandbox(namespaces={"user"}, seccomp="no-network")
    got = await (await spawn(_socket_results, sandbox=sb)).result()
    assert got == {"inet": errno.EPERM, "inet6": errno.EPERM, "unix": "ok", "pair": b"x"}


@SECCOMP
async def test_a_custom_rule_returns_its_errno() -> None:
    sb = Sandbox(seccomp={"getcwd": "EACCES", "mkdir": errno.EROFS})
    child = await spawn(os.getcwd, sandbox=sb)
    with pytest.raises(PermissionError) as info:
        await child.result()
    assert info.value.errno == errno.EACCES


@SECCOMP
async def test_a_kill_rule_is_reported_as_seccomp() -> None:
    child = await spawn(os.getcwd, sandbox=Sandbox(seccomp={"getcwd": "kill"}))
    with pytest.raises(ChildKilled) as info:
        await child.result()
    assert info.value.reason == "seccomp"


@SECCOMP
@pytest.mark.userns
async def test_seccomp_is_the_last_step_and_execve_still_works() -> None:
    sb = Sandbox(
        namespaces={"user", "pid", "mnt"}, seccomp=("default", "no-network"), env={"X": "1"}
    )
    with sb.compile() as c:
        assert c.child_steps[-1].name == "seccomp"
        assert c.fn_steps[-1].name == "seccomp"
    done = await run(["sh", "-c", "echo $X"], sandbox=sb, capture_output=True, check=True)
    assert done.stdout == b"1\n"


def test_seccomp_validation() -> None:
    with pytest.raises(ValueError, match="unknown preset 'strict'"):
        Sandbox(seccomp="strict")
    with pytest.raises(ValueError, match="not 'allow', 'kill' or an errno name"):
        Sandbox(seccomp={"ptrace": "deny"})
    with pytest.raises(ValueError, match="out of range"):
        Sandbox(seccomp={"ptrace": 5000})
    with pytest.raises(ValueError, match="seccomp is empty"):
        Sandbox(seccomp=())
    policy = SeccompPolicy.parse(["default", {"ptrace": "allow"}, "default"])
    assert policy.presets == ("default",) and policy.rules == {"ptrace": "allow"}


@SECCOMP
def test_an_unknown_syscall_fails_at_compile() -> None:
    with pytest.raises(ValueError, match="does not know the syscall 'no_such_call'"):
        Sandbox(seccomp={"no_such_call": "kill"}).compile()


# --- landlock ----------------------------------------------------------------------------------


def _landlocked(ro: str, rw: str) -> dict[str, object]:
    out: dict[str, object] = {}
    for name, fn in (
        ("read_ro", lambda: Path(ro, "f").read_text()),
        ("write_rw", lambda: Path(rw, "g").write_text("y")),
        ("write_ro", lambda: Path(ro, "h").write_text("z")),
        ("read_etc", lambda: Path("/etc/hostname").read_text()),
        ("list_root", lambda: os.listdir("/")),
    ):
        try:
            fn()
            out[name] = "ok"
        except OSError as exc:
            out[name] = exc.errno
    return out


@LANDLOCK
async def test_landlock_denies_what_its_rules_do_not_name(tmp_path: Path) -> None:
    ro, rw = tmp_path / "ro", tmp_path / "rw"
    ro.mkdir()
    rw.mkdir()
    (ro / "f").write_text("x")
    rules = Landlock(read_only=(str(ro), sys.prefix, sys.base_prefix, "/proc"), read_write=(rw,))
    got = await (
        await spawn(_landlocked, args=(str(ro), str(rw)), sandbox=Sandbox(landlock=rules))
    ).result()
    assert got == {
        "read_ro": "ok",
        "write_rw": "ok",
        "write_ro": errno.EACCES,
        "read_etc": errno.EACCES,
        "list_root": errno.EACCES,
    }
    assert (rw / "g").read_text() == "y"


@LANDLOCK
async def test_landlock_rule_on_a_missing_path_names_it() -> None:
    sb = Sandbox(landlock=Landlock(read_only=("/no/such/dir",)))
    with pytest.raises(SpawnError) as info:
        await spawn(os.getpid, sandbox=sb)
    assert info.value.step == "landlock" and info.value.filename == "/no/such/dir"
    assert info.value.errno == errno.ENOENT


def test_landlock_validation() -> None:
    with pytest.raises(ValueError, match="must be an absolute path"):
        Landlock(read_only=("relative",))
    with pytest.raises(TypeError, match="landlock must be a Landlock"):
        Sandbox(landlock={"read_only": "/"})  # type: ignore[arg-type]
