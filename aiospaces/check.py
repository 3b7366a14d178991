"""``aiospaces check``: what this host lets aiospaces do, and how to fix what it does not.

Each probe gives one :class:`Finding` — a verdict (``ok``, ``warn``,
``missing``), what was seen, and the fix where something is missing. The
namespace probes do the real thing (a :func:`~aiospaces.spawn` with that
namespace, through clone3 and a pidfd), so a seccomp profile, an AppArmor
restriction or a sysctl shows up as what it is; the hints are the ones the
library puts into its own errors (:mod:`aiospaces._linux.probe`).

>>> findings = asyncio.run(run_checks())   # doctest: +SKIP
>>> [f.name for f in findings if f.verdict == "missing"]  # doctest: +SKIP
['time namespace']
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import pwd
import shutil
import stat
import sys
from dataclasses import asdict, dataclass
from typing import Final, Literal

from . import __version__, cgroups
from ._errors import SpawnError
from ._linux import _landlock as _landlock_probe
from ._linux import constants as C
from ._linux import has_clone3
from ._linux._syscalls import HAVE_C_FORK
from ._linux.probe import kernel_release, read_setting, userns_hint
from ._spawn import spawn
from .idmap import _subids

__all__ = ["Finding", "main", "run_checks"]

Verdict = Literal["ok", "warn", "missing"]

NAMESPACE_FLAGS: Final = (
    ("user", C.CLONE_NEWUSER, "3.8"),
    ("pid", C.CLONE_NEWPID, "3.8"),
    ("mount", C.CLONE_NEWNS, "2.4.19"),
    ("net", C.CLONE_NEWNET, "2.6.29"),
    ("uts", C.CLONE_NEWUTS, "2.6.19"),
    ("ipc", C.CLONE_NEWIPC, "2.6.19"),
    ("cgroup", C.CLONE_NEWCGROUP, "4.6"),
    ("time", C.CLONE_NEWTIME, "5.6"),
)


@dataclass(frozen=True, slots=True)
class Finding:
    """One line of the report.

    ``required``: aiospaces cannot run sandboxes for this user without it
    (``aiospaces check`` then exits 1).
    """

    name: str
    verdict: Verdict
    detail: str
    fix: str = ""
    required: bool = False


_read = read_setting


def _kernel_at_least(version: str) -> bool:
    def parts(text: str) -> tuple[int, ...]:
        out = []
        for p in text.split("-", maxsplit=1)[0].split(".")[:3]:
            digits = "".join(ch for ch in p if ch.isdigit())
            out.append(int(digits or 0))
        return tuple(out)

    return parts(kernel_release()) >= parts(version)


def _is_root() -> bool:
    status = _read("/proc/self/status") or ""
    for line in status.splitlines():
        if line.startswith("CapEff:"):
            return os.geteuid() == 0 and int(line.split()[1], 16) != 0
    return False  # pragma: no cover


def _user() -> str:
    uid = os.getuid()
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


# -- namespaces -----------------------------------------------------------------------------


async def _try_spawn(flags: int) -> SpawnError | OSError | None:
    try:
        child = await spawn(int, flags, map_zero=bool(flags & C.CLONE_NEWUSER))
    except OSError as exc:
        return exc
    await child.wait()
    return None


def _sysctls() -> list[str]:
    seen = []
    for key, path in (
        ("user.max_user_namespaces", "/proc/sys/user/max_user_namespaces"),
        ("kernel.unprivileged_userns_clone", "/proc/sys/kernel/unprivileged_userns_clone"),
        (
            "kernel.apparmor_restrict_unprivileged_userns",
            "/proc/sys/kernel/apparmor_restrict_unprivileged_userns",
        ),
    ):
        value = _read(path)
        if value is not None:
            seen.append(f"{key}={value}")
    return seen


async def _namespaces(root: bool) -> list[Finding]:
    out: list[Finding] = []
    user_ok = True
    for name, flag, since in NAMESPACE_FLAGS:
        if name != "user" and not user_ok and not root:
            out.append(
                Finding(
                    f"{name} namespace",
                    "missing",
                    "not tried: needs a user namespace (see above)",
                    "make user namespaces work first",
                )
            )
            continue
        flags = flag if root or name == "user" else flag | C.CLONE_NEWUSER
        err = await _try_spawn(flags)
        how = "" if root or name == "user" else " (inside a user namespace)"
        if err is None:
            detail = f"created{how}"
            if name == "user":
                detail = f"created by {_user()}; " + (", ".join(_sysctls()) or "no sysctl limits")
            out.append(Finding(f"{name} namespace", "ok", detail))
            continue
        if name == "user":
            user_ok = False
        hint = getattr(err, "hint", None) or ""
        if name == "time" and not _kernel_at_least(since):
            hint = f"time namespaces need Linux >= 5.6 (this is {kernel_release()})"
        elif name == "user" and err.errno == errno.EPERM:
            hint = userns_hint()
        out.append(
            Finding(
                f"{name} namespace",
                "missing",
                f"refused{how}: {err.strerror or err} (Linux >= {since} has it)",
                hint,
                required=name == "user" and not root,
            )
        )
    return out


# -- the kernel interfaces -------------------------------------------------------------------


def _clone3(spawned: bool) -> Finding:
    if not has_clone3():
        return Finding(
            "clone3",
            "missing",
            f"clone3 answered ENOSYS (kernel {kernel_release()}); aiospaces falls back to clone()",
            "Linux >= 5.3, and inside a container a runtime whose seccomp profile knows "
            "clone3 (docker >= 20.10.10); time namespaces and CLONE_INTO_CGROUP need it",
        )
    helper = "compiled fork helper" if HAVE_C_FORK else "ctypes path (no compiled helper)"
    verdict: Verdict = "ok" if spawned else "warn"
    detail = f"clone3 with CLONE_PIDFD works, through the {helper}"
    if not spawned:
        detail = "not exercised: no namespace could be created"
    return Finding("clone3", verdict, detail)


def _pidfd() -> Finding:
    try:
        fd = os.pidfd_open(os.getpid())
    except OSError as exc:
        return Finding(
            "pidfd",
            "missing",
            f"pidfd_open: {exc.strerror}",
            f"pidfds need Linux >= 5.3 (5.4 for waitid, 5.8 for setns); this is {kernel_release()}",
            required=True,
        )
    os.close(fd)
    if not _kernel_at_least("5.8"):
        return Finding(
            "pidfd",
            "warn",
            "pidfd_open works; setns through a pidfd (aiospaces enter) needs Linux >= 5.8",
            "upgrade the kernel to use `aiospaces enter` / Sandbox(enter=...)",
        )
    return Finding("pidfd", "ok", "pidfd_open, waitid(P_PIDFD), setns(pidfd) (Linux >= 5.8)")


# -- cgroups -----------------------------------------------------------------------------------

_CGROUP_FLAGS: Final = {"memory_max": "--memory", "pids_max": "--pids", "cpu_max": "--cpus"}


def _cgroups(root: bool) -> Finding:
    """What :func:`aiospaces.cgroups.available` (the library's own choice) can enforce."""
    support = cgroups.available()
    have = [flag for name, flag in _CGROUP_FLAGS.items() if name in support.limits]
    lacking = [flag for name, flag in _CGROUP_FLAGS.items() if name not in support.limits]
    where = f"cgroup v{support.version}" if support.version else "no cgroup"
    fix = (
        "mount the cgroup v2 controllers (+memory +pids +cpu in cgroup.subtree_control), "
        "or " + cgroups.DELEGATE_HINT
        if root
        else cgroups.DELEGATE_HINT
    )
    if not lacking:
        return Finding("cgroups", "ok", f"{' '.join(have)} through {where}: {support.describe()}")
    detail = f"{' '.join(lacking)} cannot be enforced ({support.describe()})"
    if have:
        detail = f"{' '.join(have)} through {where}; " + detail
    return Finding("cgroups", "warn", detail, fix)


# -- id helpers, seccomp, landlock -----------------------------------------------------------


def _privileged_file(path: str) -> bool:
    st = os.stat(path)
    if st.st_mode & stat.S_ISUID and st.st_uid == 0:
        return True
    try:
        return bool(os.getxattr(path, "security.capability"))
    except OSError:
        return False


def _newidmap(root: bool) -> Finding:
    helpers = {name: shutil.which(name) for name in ("newuidmap", "newgidmap")}
    missing = [n for n, p in helpers.items() if p is None]
    if root:
        return Finding(
            "newuidmap/newgidmap",
            "ok",
            "not needed as root (maps are written directly)"
            + (f"; {', '.join(missing)} not installed" if missing else ""),
        )
    user = pwd.getpwuid(os.getuid()).pw_name if os.getuid() >= 0 else str(os.getuid())
    fix_range = (
        f"add a range for {user}: `usermod --add-subuids 100000-165535 "
        f"--add-subgids 100000-165535 {user}` (as root)"
    )
    if missing:
        return Finding(
            "newuidmap/newgidmap",
            "warn",
            f"{', '.join(missing)} not installed: only your own id can be mapped",
            "install the uidmap package (Debian/Ubuntu) or shadow-utils, then " + fix_range,
        )
    weak = [n for n, p in helpers.items() if p is not None and not _privileged_file(p)]
    if weak:
        return Finding(
            "newuidmap/newgidmap",
            "warn",
            f"{', '.join(weak)} is neither setuid root nor has file capabilities",
            "reinstall the uidmap/shadow-utils package (chmod u+s, or setcap "
            "cap_setuid+ep / cap_setgid+ep)",
        )
    subuid = _subids("/etc/subuid", os.getuid())
    subgid = _subids("/etc/subgid", os.getuid())
    if not subuid or not subgid:
        files = (("/etc/subuid", subuid), ("/etc/subgid", subgid))
        gap = " and ".join(name for name, ranges in files if not ranges)
        return Finding(
            "newuidmap/newgidmap", "warn", f"installed, but no range for {user} in {gap}", fix_range
        )
    shown = ", ".join(f"{s}-{s + n - 1}" for s, n in subuid)
    return Finding(
        "newuidmap/newgidmap",
        "ok",
        f"installed; subordinate uids {shown} (e.g. --uid-map '0 {os.getuid()} 1,1 "
        f"{subuid[0][0]} {min(subuid[0][1], 65535)}')",
    )


def _seccomp() -> Finding:
    status = _read("/proc/self/status") or ""
    fields = dict(
        (k.strip(), v.strip()) for k, _, v in (ln.partition(":") for ln in status.splitlines())
    )
    mode = fields.get("Seccomp")
    actions = _read("/proc/sys/kernel/seccomp/actions_avail")
    if mode is None or actions is None:
        return Finding(
            "seccomp",
            "missing",
            "the kernel has no seccomp filter support",
            "a kernel with CONFIG_SECCOMP_FILTER=y (every distribution kernel has it)",
        )
    if mode != "0":
        n = fields.get("Seccomp_filters", "?")
        return Finding(
            "seccomp",
            "warn",
            f"available; this process already runs under {n} seccomp filter(s) "
            "(a container runtime?) which may refuse clone3, unshare or setns",
            "if namespaces are refused above: run the container with a profile that allows "
            "them (docker: --security-opt seccomp=unconfined, or a profile with clone3)",
        )
    return Finding("seccomp", "ok", f"filters available (actions: {actions})")


def _landlock() -> Finding:
    abi = _landlock_probe.abi()
    if abi:
        return Finding("landlock", "ok", f"ABI version {abi}")
    return Finding(
        "landlock",
        "missing",
        _landlock_probe.unavailable_reason(),
        "Linux >= 5.13 built with CONFIG_SECURITY_LANDLOCK, with landlock in the lsm= "
        "kernel command line (needed only for Sandbox(landlock=...))",
    )


# -- the report -----------------------------------------------------------------------------


async def run_checks() -> list[Finding]:
    """Probe the host; one :class:`Finding` per feature, in report order."""
    root = _is_root()
    findings = [
        Finding(
            "kernel",
            "ok" if _kernel_at_least("5.3") else "missing",
            f"Linux {kernel_release()} ({os.uname().machine}); running as {_user()}"
            + (" with capabilities" if root else " without capabilities"),
            "" if _kernel_at_least("5.3") else "aiospaces needs Linux >= 5.3 (clone3, pidfd)",
            required=not _kernel_at_least("5.3"),
        )
    ]
    ns = await _namespaces(root)
    findings.extend(ns)
    findings.append(_clone3(any(f.verdict == "ok" for f in ns)))
    findings.append(_pidfd())
    findings.append(_cgroups(root))
    findings.append(_newidmap(root))
    findings.append(_seccomp())
    findings.append(_landlock())
    return findings


def usable(findings: list[Finding]) -> bool:
    """True when nothing required is missing: sandboxes can run here."""
    return not any(f.required and f.verdict == "missing" for f in findings)


_MARK: Final = {"ok": "ok", "warn": "warn", "missing": "MISSING"}


def format_report(findings: list[Finding]) -> str:
    """The human report: ``VERDICT  NAME  detail`` lines, each fix indented below."""
    width = max(len(f.name) for f in findings)
    lines = [f"aiospaces {__version__} preflight"]
    for f in findings:
        lines.append(f"{_MARK[f.verdict]:<8} {f.name:<{width}}  {f.detail}")
        if f.fix:
            lines.append(f"{'':<8} {'':<{width}}  fix: {f.fix}")
    lines.append(
        "verdict: aiospaces can run sandboxes here"
        if usable(findings)
        else "verdict: aiospaces cannot run sandboxes for this user: see the MISSING lines"
    )
    return "\n".join(lines)


def main(*, as_json: bool = False) -> int:
    """``aiospaces check``: print the report; exit status 0 if usable, else 1."""
    findings = asyncio.run(run_checks())
    if as_json:
        doc = {
            "version": __version__,
            "kernel": kernel_release(),
            "uid": os.getuid(),
            "usable": usable(findings),
            "checks": [asdict(f) for f in findings],
        }
        print(json.dumps(doc, indent=2))
    else:
        print(format_report(findings))
    sys.stdout.flush()
    return 0 if usable(findings) else 1
