"""Who runs the suite, and the layering rule.

CI runs the suite twice: as root, and as an unprivileged user without
capabilities (``.ci/run``, ``scripts/test-unprivileged``). These tests prove
each pass ran with the privileges it was meant to have: a misconfigured CI
whose "unprivileged" pass silently runs as root (so that every
``unprivileged`` test skips) is red, not green. ``.ci/run`` states what it
expects in the environment:

* ``AIOSPACES_EXPECT_UNPRIVILEGED`` ``0`` (root pass) or ``1`` (unprivileged);
* ``AIOSPACES_EXPECT_USERNS=1``: unprivileged user namespaces work here;
* ``AIOSPACES_EXPECT_NEWUIDMAP=1``: newuidmap/newgidmap are installed and the
  user has a subordinate id range.

Under ``CI=true`` the first one must be present.
"""

from __future__ import annotations

import ast
import os
import pwd
import shutil
import subprocess
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "aiospaces"
LINUX_LAYER = PACKAGE / "_linux"

CAP_SETGID = 6
CAP_SETUID = 7
CAP_SYS_CHROOT = 18
CAP_SYS_ADMIN = 21


def capabilities() -> dict[str, int]:
    """The CapInh/CapPrm/CapEff/CapBnd/CapAmb masks of this process."""
    caps = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("Cap"):
            name, value = line.split(":")
            caps[name] = int(value, 16)
    return caps


def assert_unprivileged() -> None:
    caps = capabilities()
    assert os.geteuid() != 0, "euid is 0"
    assert os.getuid() != 0, "uid is 0"
    assert caps["CapEff"] == 0, f"effective capabilities: {caps['CapEff']:#x}"
    assert caps["CapPrm"] == 0, f"permitted capabilities: {caps['CapPrm']:#x}"
    assert caps["CapAmb"] == 0, f"ambient capabilities: {caps['CapAmb']:#x}"


def assert_root() -> None:
    caps = capabilities()
    assert os.geteuid() == 0, f"euid is {os.geteuid()}"
    # "all capabilities" = all that the bounding set allows: a container may
    # withhold a few (CAP_SYS_RESOURCE, say), never the ones aiospaces needs.
    assert caps["CapEff"] == caps["CapBnd"], (
        f"CapEff {caps['CapEff']:#x} != CapBnd {caps['CapBnd']:#x}"
    )
    for bit in (CAP_SETGID, CAP_SETUID, CAP_SYS_CHROOT, CAP_SYS_ADMIN):
        assert caps["CapEff"] >> bit & 1, f"capability {bit} missing: {caps['CapEff']:#x}"


@pytest.mark.unprivileged
def test_unprivileged_pass_has_no_privilege() -> None:
    assert_unprivileged()


@pytest.mark.root
def test_root_pass_has_every_capability() -> None:
    assert_root()


def test_ci_pass_has_the_privileges_ci_expects() -> None:
    expect = os.environ.get("AIOSPACES_EXPECT_UNPRIVILEGED")
    if expect is None:
        if os.environ.get("CI") == "true":
            pytest.fail(
                "CI=true but AIOSPACES_EXPECT_UNPRIVILEGED is not set: "
                ".ci/run must say which pass this is (0 = root, 1 = unprivileged)"
            )
        pytest.skip("not in CI (AIOSPACES_EXPECT_UNPRIVILEGED not set)")
    assert expect in ("0", "1"), f"AIOSPACES_EXPECT_UNPRIVILEGED={expect!r}, want 0 or 1"
    if expect == "1":
        assert_unprivileged()
    else:
        assert_root()


def test_ci_user_namespaces_work() -> None:
    if os.environ.get("AIOSPACES_EXPECT_USERNS") != "1":
        pytest.skip("AIOSPACES_EXPECT_USERNS=1 not set")
    r = subprocess.run(
        ["unshare", "--user", "--map-root-user", "true"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert r.returncode == 0, f"unshare --user --map-root-user: {r.stderr.strip()}"


def test_ci_newuidmap_works() -> None:
    if os.environ.get("AIOSPACES_EXPECT_NEWUIDMAP") != "1":
        pytest.skip("AIOSPACES_EXPECT_NEWUIDMAP=1 not set")
    for tool in ("newuidmap", "newgidmap"):
        assert shutil.which(tool), f"{tool} missing (Debian package uidmap)"
    if os.geteuid() == 0:
        return  # root writes its maps itself; the subordinate range is the user's
    me = {pwd.getpwuid(os.getuid()).pw_name, str(os.getuid())}
    for file in ("/etc/subuid", "/etc/subgid"):
        owners = {line.split(":")[0] for line in Path(file).read_text().splitlines() if line}
        assert owners & me, f"no range for {me} in {file}"
    # the whole chain, for real: unshare asks newuidmap/newgidmap for the range
    r = subprocess.run(
        ["unshare", "--user", "--map-auto", "--map-root-user", "cat", "/proc/self/uid_map"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert r.returncode == 0, f"unshare --map-auto: {r.stderr.strip()}"
    assert len(r.stdout.splitlines()) >= 2, f"only one uid_map line:\n{r.stdout}"


def ctypes_import_lines(source: str) -> list[int]:
    """Line numbers of ``source`` that import ctypes, in any spelling."""

    def is_ctypes(name: str | None) -> bool:
        return name is not None and (name == "ctypes" or name.startswith("ctypes."))

    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            hit = any(is_ctypes(alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            hit = node.level == 0 and is_ctypes(node.module)
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            first = node.args[0]
            hit = (
                name in ("__import__", "import_module")
                and isinstance(first, ast.Constant)
                and isinstance(first.value, str)
                and is_ctypes(first.value)
            )
        else:
            continue
        if hit:
            lines.append(node.lineno)
    return sorted(lines)


def test_only_the_linux_layer_imports_ctypes() -> None:
    sources = [p for p in PACKAGE.rglob("*.py") if LINUX_LAYER not in p.parents]
    assert sources, f"no sources found under {PACKAGE}"
    offenders = [
        f"{path.relative_to(PACKAGE.parent)}:{line}"
        for path in sorted(sources)
        for line in ctypes_import_lines(path.read_text())
    ]
    assert not offenders, "ctypes imported outside aiospaces/_linux/: " + ", ".join(offenders)


def test_the_ctypes_check_sees_every_spelling() -> None:
    # the check above would pass vacuously if ctypes_import_lines missed one
    source = (
        "import ctypes\n"
        "import ctypes.util as u\n"
        "from ctypes import CDLL\n"
        "import importlib\n"
        "importlib.import_module('ctypes')\n"
        "__import__('ctypes.util')\n"
        "import ctypeslib_not_it\n"
        "from . import ctypes_helpers\n"
    )
    assert ctypes_import_lines(source) == [1, 2, 3, 5, 6]
