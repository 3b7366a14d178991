"""``aiospaces check``: the preflight report, human and ``--json``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from aiospaces.check import Finding, format_report, usable

ROOT = str(Path(__file__).resolve().parent.parent)
NAMES = {
    "kernel",
    "user namespace",
    "pid namespace",
    "mount namespace",
    "net namespace",
    "uts namespace",
    "ipc namespace",
    "cgroup namespace",
    "time namespace",
    "clone3",
    "pidfd",
    "cgroups",
    "newuidmap/newgidmap",
    "seccomp",
    "landlock",
}


def check(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-m", "aiospaces", "check", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    r = check("--json")
    assert r.returncode in (0, 1), r.stderr
    doc: dict[str, Any] = json.loads(r.stdout)
    assert r.returncode == (0 if doc["usable"] else 1)
    return doc


def test_json_report_names_every_probe(report: dict[str, Any]) -> None:
    checks = report["checks"]
    assert isinstance(checks, list)
    names = {c["name"] for c in checks}
    assert names >= NAMES
    for c in checks:
        assert c["verdict"] in ("ok", "warn", "missing"), c
        assert c["detail"], c
        if c["verdict"] != "ok":
            assert c["fix"], f"{c['name']}: no fix for a {c['verdict']} verdict"
    assert report["uid"] == os.getuid()
    assert report["kernel"] == os.uname().release


@pytest.mark.userns
def test_namespaces_that_work_here_are_ok(report: dict[str, Any]) -> None:
    verdicts = {c["name"]: c["verdict"] for c in report["checks"]}
    for name in ("user", "pid", "mount", "net", "uts", "ipc"):
        assert verdicts[f"{name} namespace"] == "ok"
    assert verdicts["clone3"] == "ok"
    assert verdicts["pidfd"] == "ok"
    assert report["usable"] is True


@pytest.mark.root
def test_root_needs_no_id_helpers(report: dict[str, Any]) -> None:
    helpers = next(c for c in report["checks"] if c["name"] == "newuidmap/newgidmap")
    assert helpers["verdict"] == "ok"
    assert "root" in helpers["detail"]


@pytest.mark.unprivileged
@pytest.mark.newuidmap
def test_unprivileged_report_shows_the_subordinate_range(report: dict[str, Any]) -> None:
    helpers = next(c for c in report["checks"] if c["name"] == "newuidmap/newgidmap")
    owners = {line.split(":")[0] for line in Path("/etc/subuid").read_text().splitlines()}
    if owners & {str(os.getuid()), os.environ.get("USER")}:
        assert helpers["verdict"] == "ok", helpers
        assert "subordinate uids" in helpers["detail"]
    else:
        assert helpers["verdict"] == "warn"
        assert "usermod" in helpers["fix"]


def test_human_report_has_a_verdict_per_line() -> None:
    r = check()
    assert r.returncode in (0, 1), r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("aiospaces ")
    assert lines[-1].startswith("verdict: ")
    for line in lines[1:-1]:
        first = line.split()[0]
        assert first in ("ok", "warn", "MISSING", "fix:"), line


def test_format_and_usable() -> None:
    findings = [
        Finding("user namespace", "missing", "refused", "sysctl -w x=1", required=True),
        Finding("landlock", "ok", "ABI version 4"),
    ]
    text = format_report(findings)
    assert "MISSING  user namespace" in text
    assert "fix: sysctl -w x=1" in text
    assert not usable(findings)
    assert text.splitlines()[-1].startswith("verdict: aiospaces cannot")
    assert usable(findings[1:])
