"""``Sandbox.untrusted()``: every fence at once, seen from inside."""

from __future__ import annotations

import errno
import os
import socket
import uuid

import pytest
from limits_helpers import no_cgroup_leftovers, status  # noqa: F401  (autouse fixture)

from aiospaces import Sandbox, Tmpfs, run, spawn
from aiospaces.cgroups import available
from aiospaces.hardening import SeccompPolicy, seccomp_available

pytestmark = [
    pytest.mark.userns,
    pytest.mark.skipif(not seccomp_available(), reason="pyseccomp/libseccomp missing"),
]


def test_the_preset_spec() -> None:
    sb = Sandbox.untrusted(timeout=30)
    assert sb.namespaces == {"user", "pid", "mnt", "net", "uts", "ipc", "cgroup", "time"}
    assert sb.network_mode == "none" and sb.hostname == "sandbox"
    assert isinstance(sb.seccomp, SeccompPolicy)
    assert sb.seccomp.presets == ("default", "no-network")
    assert sb.no_new_privs and sb.keep_caps == frozenset()
    assert sb.landlock is not None and "/tmp" in sb.landlock.read_write
    assert Tmpfs("/tmp", size="64m") in sb.mounts
    names = {r.limit_name for r in sb.rlimits}  # type: ignore[union-attr]
    assert {"NOFILE", "FSIZE", "CORE"} <= names
    if "memory_max" in available().limits:
        assert sb.memory_max == 512 << 20 and "AS" not in names
    else:  # no cgroup can enforce it here: RLIMIT_AS per process instead
        assert sb.memory_max is None and "AS" in names
    assert sb.timeout == 30
    assert Sandbox.untrusted(hostname="box", memory_max=None).hostname == "box"


def _inside(scratch: str) -> dict[str, object]:
    out: dict[str, object] = {
        "hostname": socket.gethostname(),
        "uid": os.getuid(),
        "pid": os.getpid(),
        "root": sorted(os.listdir("/")),
        "nnp": status("NoNewPrivs"),
        "capeff": status("CapEff"),
        "seccomp": status("Seccomp"),
        "etc": sorted(os.listdir("/etc")),
    }
    try:
        socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        out["inet"] = "ok"
    except OSError as exc:
        out["inet"] = exc.errno
    with open(scratch, "w") as f:
        f.write("mine")
    for name, path in (("write_usr", "/usr/x"), ("write_root", "/x")):
        try:
            open(path, "w").close()
            out[name] = "ok"
        except OSError as exc:
            out[name] = exc.errno
    return out


def _exists(path: str) -> bool:
    return os.path.exists(path)


async def test_untrusted_fn_sees_only_its_fences() -> None:
    scratch = f"/tmp/aiospaces-untrusted-{os.getpid()}-{uuid.uuid4().hex}"
    sb = Sandbox.untrusted(timeout=60)
    child = await spawn(_inside, args=(scratch,), sandbox=sb, result_format="json")
    got = await child.result()
    assert got["hostname"] == "sandbox" and got["uid"] == 0 and got["pid"] == 1
    assert got["nnp"] == "1" and int(str(got["capeff"]), 16) == 0 and got["seccomp"] == "2"
    assert got["inet"] == errno.EPERM
    assert got["write_usr"] in (errno.EROFS, errno.EACCES)
    assert got["write_root"] in (errno.EROFS, errno.EACCES)
    assert "tmp" in got["root"] and "home" not in got["root"]  # type: ignore[operator]
    assert "shadow" not in got["etc"] and "passwd" not in got["etc"]  # type: ignore[operator]
    assert not _exists(scratch)  # its /tmp was private


async def test_untrusted_exec_mode() -> None:
    sb = Sandbox.untrusted(python=False, timeout=60)
    done = await run(
        ["sh", "-c", "echo hi > /tmp/f && cat /tmp/f && ls /home 2>/dev/null || echo nohome"],
        sandbox=sb,
        capture_output=True,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"hi\nnohome\n"
