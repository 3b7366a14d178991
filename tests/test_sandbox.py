"""Sandbox: filesystem, identity, environment, validation (real mounts, real namespaces)."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
from pathlib import Path

import pytest

from aiospaces import SpawnError, spawn
from aiospaces.sandbox import (
    Bind,
    Dev,
    Proc,
    ReadOnly,
    Sandbox,
    Symlink,
    Tmpfs,
    Veth,
)

# Counts clones: clone3 runs the os.register_at_fork hooks as os.fork() does.
FORKS = [0]
os.register_at_fork(before=lambda: FORKS.__setitem__(0, FORKS[0] + 1))

USER_PID = frozenset({"user", "pid"})
HOST_ROOT = (Bind("/", "/", readonly=True), Tmpfs("/tmp"), Proc(), Dev())


def _host_layout() -> tuple[Bind | Symlink, ...]:
    """/usr read-only, and /bin, /lib*, /sbin as the host has them (links or binds)."""
    out: list[Bind | Symlink] = [Bind("/usr", readonly=True)]
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = f"/{name}"
        if os.path.islink(path):
            out.append(Symlink(os.readlink(path), path))
        elif os.path.isdir(path):
            out.append(Bind(path, readonly=True))
    return tuple(out)


# --- the host's root, read-only, with private /tmp, /proc, /dev -----------------------


@pytest.mark.userns
async def test_readonly_host_root_with_private_tmp_proc_dev(tmp_path: Path) -> None:
    marker = f"/tmp/aiospaces-sandbox-{os.getpid()}-{id(tmp_path)}"
    secret = tmp_path / "host-only"
    secret.write_text("secret")

    def inside() -> dict[str, object]:
        out: dict[str, object] = {}
        try:
            with open("/usr/aiospaces-write-test", "w"):
                pass
        except OSError as exc:
            out["usr"] = exc.errno
        Path(marker).write_text("inside")
        out["tmp"] = Path(marker).read_text()
        out["pids"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
        ps = subprocess.run(["ps", "-e", "-o", "pid="], capture_output=True, text=True, check=True)
        out["ps"] = sorted(int(p) for p in ps.stdout.split())
        with open("/dev/null", "w") as f:
            f.write("discarded")
        with open("/dev/zero", "rb") as f:
            out["zero"] = f.read(4)
        out["dev"] = sorted(os.listdir("/dev"))
        # The host's tmp_path lives under the host's /tmp: hidden by the tmpfs.
        out["secret"] = os.path.exists(str(secret))
        out["mountinfo_oldroot"] = "oldroot" in Path("/proc/self/mountinfo").read_text()
        return out

    child = await spawn(inside, sandbox=Sandbox(namespaces=USER_PID, mounts=HOST_ROOT))
    got = await child.result()
    assert got["usr"] == errno.EROFS
    assert got["tmp"] == "inside"
    assert not Path(marker).exists(), "the sandbox's /tmp leaked to the host"  # noqa: ASYNC240
    assert got["pids"] == [1]
    assert got["ps"][0] == 1 and len(got["ps"]) == 2  # the sandbox and ps itself
    assert got["zero"] == b"\0\0\0\0"
    assert {"null", "zero", "full", "random", "urandom", "tty", "shm", "fd"} <= set(got["dev"])  # type: ignore[arg-type]
    assert got["secret"] is False
    assert got["mountinfo_oldroot"] is False


@pytest.mark.userns
async def test_pivot_root_into_a_few_binds() -> None:
    host_entries = set(os.listdir("/"))

    def inside() -> dict[str, object]:
        ls = subprocess.run(["/usr/bin/ls", "/"], capture_output=True, text=True, check=True)
        fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
        try:
            # ".." of the root is the root, however often it is climbed.
            up = os.open("../../..", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            same = os.fstat(up).st_ino == os.stat("/").st_ino
            os.close(up)
        finally:
            os.close(fd)
        return {
            "root": sorted(os.listdir("/")),
            "ls": sorted(ls.stdout.split()),
            "dotdot": sorted(os.listdir("/usr/../../..")),
            "same": same,
            "etc": os.path.exists("/etc/passwd"),
            "cwd": os.getcwd(),
        }

    layout = _host_layout()
    expected = sorted({m.target.lstrip("/") for m in layout} | {"proc"})
    sb = Sandbox(namespaces=USER_PID, mounts=(*layout, Proc()))
    got = await (await spawn(inside, sandbox=sb)).result()
    assert got["root"] == expected
    assert got["ls"] == expected
    assert got["dotdot"] == expected
    assert got["same"] is True
    assert got["etc"] is False
    assert got["cwd"] == "/"
    assert "etc" in host_entries  # the host is untouched


@pytest.mark.userns
async def test_chroot_an_existing_tree(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "file").write_text("hello")
    (tmp_path / "proc").mkdir()

    def inside() -> tuple[list[str], str, str]:
        return sorted(os.listdir("/")), Path("/data/file").read_text(), os.getcwd()

    sb = Sandbox(namespaces=USER_PID, chroot=tmp_path, mounts=(Proc(),), cwd="/data")
    names, text, cwd = await (await spawn(inside, sandbox=sb)).result()
    assert names == ["data", "proc"]
    assert text == "hello"
    assert cwd == "/data"


@pytest.mark.userns
async def test_tmpfs_size_mode_symlink_and_readonly() -> None:
    def inside() -> dict[str, object]:
        st = os.statvfs("/scratch")
        out: dict[str, object] = {
            "size": st.f_blocks * st.f_frsize,
            "mode": oct(os.stat("/scratch").st_mode & 0o7777),
            "link": os.readlink("/scratch/here"),
        }
        try:
            open("/frozen/x", "w").close()
        except OSError as exc:
            out["frozen"] = exc.errno
        open("/scratch/x", "w").close()  # not under the read-only mount
        return out

    sb = Sandbox(
        namespaces={"user"},
        mounts=(
            Tmpfs("/scratch", size="1m", mode=0o700),
            Symlink("/elsewhere", "/scratch/here"),
            Tmpfs("/frozen"),
            ReadOnly("/frozen"),
        ),
    )
    got = await (await spawn(inside, sandbox=sb)).result()
    assert got["size"] == 1 << 20
    assert got["mode"] == "0o700"
    assert got["link"] == "/elsewhere"
    assert got["frozen"] == errno.EROFS


@pytest.mark.userns
async def test_a_failing_mount_names_its_step_and_path() -> None:
    sb = Sandbox(
        namespaces={"user"},
        mounts=(Bind("/", readonly=True), Tmpfs("/no-such-dir-aiospaces")),
    )
    with pytest.raises(SpawnError) as info:
        await spawn(os.getpid, sandbox=sb)
    assert info.value.step == "tmpfs /no-such-dir-aiospaces"
    assert info.value.errno == errno.EROFS
    assert info.value.filename == "/no-such-dir-aiospaces"


# --- identity, ids, environment -------------------------------------------------------


@pytest.mark.userns
async def test_hostname_and_domainname_inside_only() -> None:
    before = socket.gethostname()
    sb = Sandbox(namespaces={"user"}, hostname="sandbox-host", domainname="sandbox.test")

    def inside() -> tuple[str, str]:
        return socket.gethostname(), Path("/proc/sys/kernel/domainname").read_text().strip()

    assert await (await spawn(inside, sandbox=sb)).result() == ("sandbox-host", "sandbox.test")
    assert socket.gethostname() == before


@pytest.mark.userns
async def test_map_zero_is_the_default_for_a_user_namespace() -> None:
    sb = Sandbox(namespaces={"user"}, uid=0, gid=0)
    assert await (await spawn(lambda: (os.getuid(), os.getgid()), sandbox=sb)).result() == (0, 0)


@pytest.mark.root
async def test_uid_gid_switch_as_root() -> None:
    sb = Sandbox(uid=65534, gid=65534, cwd="/")
    got = await (
        await spawn(lambda: (os.getresuid(), os.getresgid(), os.getgroups()), sandbox=sb)
    ).result()
    assert got == ((65534,) * 3, (65534,) * 3, [])


async def test_env_and_clear_env() -> None:
    os.environ["AIOSPACES_TEST_INHERITED"] = "1"
    try:
        added = Sandbox(env={"AIOSPACES_TEST_ADDED": "x"})
        env = await (await spawn(lambda: dict(os.environ), sandbox=added)).result()
        assert env["AIOSPACES_TEST_ADDED"] == "x"
        assert env["AIOSPACES_TEST_INHERITED"] == "1"
        only = Sandbox(env={"ONLY": "this"}, clear_env=True)
        assert await (await spawn(lambda: dict(os.environ), sandbox=only)).result() == {
            "ONLY": "this"
        }
        assert added.compile().env == {**os.environ, "AIOSPACES_TEST_ADDED": "x"}
    finally:
        del os.environ["AIOSPACES_TEST_INHERITED"]


@pytest.mark.userns
async def test_spawn_flags_add_namespaces_to_the_sandbox() -> None:
    from aiospaces import CLONE_NEWNET, CLONE_NEWPID

    sb = Sandbox(namespaces={"user"}, mounts=(Tmpfs("/"),))
    child = await spawn(os.getpid, CLONE_NEWPID, sandbox=sb)
    assert await child.result() == 1
    assert child.flags & CLONE_NEWPID
    # An added net namespace gets the default network: loopback, up.
    child = await spawn(_lo_is_up, CLONE_NEWNET, sandbox=Sandbox(namespaces={"user"}))
    assert await child.result() is True
    with pytest.raises(ValueError, match="network='host'"):
        await spawn(os.getpid, CLONE_NEWNET, sandbox=Sandbox(namespaces={"user"}, network="host"))


def _lo_is_up() -> bool:
    import fcntl
    import struct

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        res = fcntl.ioctl(s, 0x8913, struct.pack("16sh22x", b"lo", 0))  # SIOCGIFFLAGS
    return bool(struct.unpack_from("h", res, 16)[0] & 1)


# --- validation: before any process exists --------------------------------------------

INVALID = [
    (lambda: Bind("usr"), ValueError, "relative"),
    (lambda: Bind("/usr", "usr"), ValueError, "relative"),
    (lambda: Tmpfs("/tmp/../../etc"), ValueError, "'..'"),
    (lambda: Tmpfs("/tmp", size="lots"), ValueError, "Tmpfs.size"),
    (lambda: Tmpfs("/tmp", mode=0o17777), ValueError, "Tmpfs.mode"),
    (lambda: Symlink("", "/x"), ValueError, "link_target"),
    (lambda: Proc("proc"), ValueError, "Proc.dst"),
    (lambda: Dev("/"), ValueError, "Dev.dst"),
    (lambda: Sandbox(mounts=("/usr",)), TypeError, "unknown mount kind str"),  # type: ignore[arg-type]
    (lambda: Sandbox(namespaces={"user"}, mounts=(Proc(),)), ValueError, "needs a new pid"),
    (lambda: Sandbox(namespaces={"user", "pid"}, mounts=(Proc("/"),)), ValueError, "root"),
    (lambda: Sandbox(namespaces={"bogus"}), ValueError, "unknown namespace 'bogus'"),
    (lambda: Sandbox(namespaces=3), TypeError, "namespaces"),  # type: ignore[arg-type]
    (lambda: Sandbox(network="wifi"), ValueError, "network"),  # type: ignore[arg-type]
    (lambda: Sandbox(namespaces={"net"}, network="host"), ValueError, "network='host'"),
    (lambda: Sandbox(map_zero=True), ValueError, "user namespace"),
    (lambda: Sandbox(uid_map="0 1000 1"), ValueError, "user namespace"),
    (lambda: Sandbox(namespaces={"user"}, uid_map="0 1 x"), ValueError, "uid_map"),
    (lambda: Sandbox(namespaces={"user"}, uid=1000), ValueError, "uid 1000 is not mapped"),
    (lambda: Sandbox(uid=-1), ValueError, "uid"),
    (lambda: Sandbox(gid="0"), TypeError, "gid"),  # type: ignore[arg-type]
    (lambda: Sandbox(hostname="x" * 65), ValueError, "hostname"),
    (lambda: Sandbox(hostname=""), ValueError, "hostname"),
    (lambda: Sandbox(cwd="relative"), ValueError, "cwd"),
    (lambda: Sandbox(env={"A=B": "x"}), ValueError, "env"),
    (lambda: Sandbox(env={"A": 1}), TypeError, "env"),  # type: ignore[dict-item]
    (lambda: Sandbox(clear_env=1), TypeError, "clear_env"),  # type: ignore[arg-type]
    (lambda: Sandbox(propagation="shared"), ValueError, "propagation"),  # type: ignore[arg-type]
    (lambda: Sandbox(chroot="/srv", mounts=(Bind("/", "/"),)), ValueError, "chroot"),
    (lambda: Sandbox(join={"net"}), ValueError, "join needs enter"),
    (lambda: Sandbox(enter="me"), TypeError, "enter"),  # type: ignore[arg-type]
    (lambda: Sandbox(enter=0), ValueError, "not a pid"),
    (lambda: Sandbox(enter=1, namespaces={"pid"}), ValueError, "cannot be made new"),
    (lambda: Sandbox(enter=1, join={"uts"}, hostname="x"), ValueError, "both joined"),
    (lambda: Sandbox(enter=1, join=set()), ValueError, "join is empty"),
    (lambda: Veth("10.200.0.2/24", "10.201.0.1/24"), ValueError, "same subnet"),
    (lambda: Veth("10.200.0.2", "10.200.0.1/24"), ValueError, "prefix"),
    (lambda: Veth("fd00::2/64", "fd00::1/64"), ValueError, "IPv4"),
    (lambda: Veth("10.200.0.2/24", "10.200.0.1/24", ifname="x" * 16), ValueError, "ifname"),
]


@pytest.mark.parametrize(("make", "exc", "words"), INVALID)
def test_invalid_specs_raise_at_construction(make: object, exc: type, words: str) -> None:
    before = FORKS[0]
    with pytest.raises(exc, match=words.replace("(", r"\(").replace("[", r"\[")):
        make()  # type: ignore[operator]
    assert FORKS[0] == before


@pytest.mark.unprivileged
def test_veth_needs_root() -> None:
    with pytest.raises(PermissionError, match="Veth needs root"):
        Sandbox(network=Veth("10.200.0.2/24", "10.200.0.1/24"))


async def test_spawn_errors_before_any_clone() -> None:
    before = FORKS[0]
    sb = Sandbox(namespaces={"user"}, mounts=(Bind("/no/such/aiospaces/source"),))
    with pytest.raises(FileNotFoundError, match=r"Bind\.src"):
        await spawn(os.getpid, sandbox=sb)
    with pytest.raises(ValueError, match="put uid_map/gid_map/map_zero in the Sandbox"):
        await spawn(os.getpid, sandbox=Sandbox(namespaces={"user"}), map_zero=True)
    with pytest.raises(TypeError, match="sandbox must be a Sandbox"):
        await spawn(os.getpid, sandbox={"namespaces": ["user"]})  # type: ignore[arg-type]
    assert FORKS[0] == before


def test_spec_is_frozen_and_normalised() -> None:
    sb = Sandbox(namespaces=["mount", "user"], hostname="h", mounts=[Tmpfs("//tmp/")])  # type: ignore[arg-type]
    assert sb.namespaces == {"user", "mnt", "uts"}
    assert sb.mounts == (Tmpfs("/tmp"),)
    assert sb.network is None and sb.network_mode == "host"
    with pytest.raises(AttributeError):
        sb.hostname = "other"  # type: ignore[misc]
    assert Sandbox(namespaces={"net"}).network_mode == "loopback"
    assert Bind("/usr").dst == "/usr"


def test_compile_orders_the_steps() -> None:
    sb = Sandbox(
        namespaces={"user", "pid", "net"},
        hostname="h",
        mounts=(ReadOnly("/"), Tmpfs("/"), Proc()),
        cwd="/",
        env={"A": "b"},
    )
    with sb.compile() as c:
        names = [s.name for s in c.child_steps]
        assert names == [
            "mount propagation",
            "new root",
            "tmpfs /",
            "mount proc /proc",
            "read-only /",
            "pivot_root",
            "hostname",
            "loopback up",
            "cwd /",
            "no_new_privs",  # the default hardening (aiospaces.hardening), last
            "capabilities",
        ]
        assert [s.name for s in c.fn_steps][-3:] == ["environment", "no_new_privs", "capabilities"]
        assert c.maps is not None and c.maps.uid_map is not None
        assert c.pass_fds == ()
