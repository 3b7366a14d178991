"""Hardening fences of a :class:`~aiospaces.Sandbox`: no_new_privs, capabilities, Landlock, seccomp.

They are the last child-side steps, after the sandbox's own setup (mounts,
pivot_root, hostname, ids) — which is why a seccomp preset can forbid
``mount`` and ``unshare`` although the sandbox used them a moment before::

    ... setup ... → [caps: bounding set, before the uid switch] → uid/gid → cwd
    → (fn mode: environment) → rlimits → no_new_privs → landlock → capabilities
    → seccomp  →  fn / execve

* ``no_new_privs`` (default on): ``execve`` never grants privileges again
  (setuid bits and file capabilities are ignored). Landlock and seccomp
  need it unless the child holds CAP_SYS_ADMIN in its user namespace.
* ``keep_caps`` (default: none): every capability is dropped from the
  effective, permitted, inheritable, ambient and bounding sets except the
  named ones, which are also raised in the ambient set so they survive
  ``execve`` for a non-root uid. ``keep_caps="all"`` leaves them alone.
* ``landlock``: a :class:`Landlock` ruleset — a second fence beside the
  mounts: paths outside its rules are denied even if the mounts show them.
* ``seccomp``: presets and rules compiled by the system libseccomp (extra
  ``seccomp``: ``pip install 'aiospaces[seccomp]'``)::

      Sandbox(namespaces={"user"}, seccomp="default")
      Sandbox(namespaces={"user"}, seccomp=("default", "no-network"))
      Sandbox(namespaces={"user"}, seccomp={"mkdir": errno.EROFS, "ptrace": "kill"})
      Sandbox(namespaces={"user"}, seccomp=("default", {"personality": "allow"}))

  ``"default"`` denies (EPERM) what container runtimes deny by default —
  see :data:`DEFAULT_DENY`; new namespaces (``unshare``/``clone`` with
  ``CLONE_NEW*``, ``setns``) fail with EPERM and ``clone3`` with ENOSYS (its
  flags live in memory a filter cannot read; libc then falls back to
  ``clone``). ``"no-network"``: ``socket()`` of any family but AF_UNIX fails
  with EPERM, and io_uring (which can open sockets) with ENOSYS. A user rule
  maps a syscall name to ``"allow"``, ``"kill"`` (the process dies with
  SIGSYS: ``ChildKilled.reason == "seccomp"``) or an errno (a number or a
  name such as ``"EACCES"``); user rules override the presets. Syscalls of
  a foreign architecture (i386 ``int 0x80`` on x86-64) kill the process.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

from ._linux import _caps, _landlock, _seccomp
from ._linux import constants as C

__all__ = [
    "DEFAULT_DENY",
    "SECCOMP_PRESETS",
    "Landlock",
    "SeccompPolicy",
    "landlock_abi",
    "seccomp_available",
]

Action = str | int  # "allow", "kill" or an errno

DEFAULT_DENY: Final = (
    # process inspection and code injection
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
    # the kernel itself: modules, kexec, reboot, swap, accounting, clocks
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "create_module", "reboot", "swapon", "swapoff", "acct", "settimeofday", "clock_settime",
    "clock_adjtime", "adjtimex", "syslog", "iopl", "ioperm", "quotactl", "quotactl_fd",
    "lookup_dcookie", "nfsservctl", "uselib", "vhangup", "_sysctl",
    # large attack surfaces: keyrings, bpf, perf, userfaultfd, io_uring, fanotify
    "keyctl", "add_key", "request_key", "bpf", "perf_event_open", "userfaultfd",
    "io_uring_setup", "io_uring_enter", "io_uring_register", "fanotify_init",
    # filesystems: the sandbox's own mounts are done by now
    "mount", "umount2", "pivot_root", "move_mount", "open_tree", "fsopen", "fsconfig",
    "fsmount", "fspick", "mount_setattr", "chroot",
    # escaping through file handles (the "shocker" exploit), namespaces
    "open_by_handle_at", "name_to_handle_at", "setns",
)  # fmt: skip
"""Syscalls the ``"default"`` preset fails with EPERM (those this kernel knows)."""

_NS_FLAGS: Final = (
    C.CLONE_NEWNS, C.CLONE_NEWCGROUP, C.CLONE_NEWUTS, C.CLONE_NEWIPC, C.CLONE_NEWUSER,
    C.CLONE_NEWPID, C.CLONE_NEWNET,
)  # fmt: skip

SECCOMP_PRESETS: Final = ("default", "no-network")


def _preset_rules(name: str) -> list[_seccomp.Rule]:
    eperm = errno.EPERM
    rules: list[_seccomp.Rule] = []
    if name == "default":
        rules += [(n, eperm, ()) for n in DEFAULT_DENY]
        for flag in (*_NS_FLAGS, C.CLONE_NEWTIME):
            rules.append(("unshare", eperm, ((0, "&==", flag, flag),)))
        for flag in _NS_FLAGS:  # clone's first argument is its flags on every arch
            rules.append(("clone", eperm, ((0, "&==", flag, flag),)))
        rules.append(("clone3", errno.ENOSYS, ()))
    elif name == "no-network":
        rules.append(("socket", eperm, ((0, "!=", socket.AF_UNIX, 0),)))
        rules += [(n, errno.ENOSYS, ()) for n in
                  ("io_uring_setup", "io_uring_enter", "io_uring_register")]  # fmt: skip
    return rules


def _action(value: object, where: str) -> Action:
    if isinstance(value, bool):
        raise TypeError(f"{where}: an action is 'allow', 'kill' or an errno, not a bool")
    if isinstance(value, int):
        if not 0 < value < 4096:
            raise ValueError(f"{where}: errno {value} is out of range (1..4095)")
        return value
    if isinstance(value, str):
        if value in ("allow", "kill"):
            return value
        number = getattr(errno, value.upper(), None)
        if isinstance(number, int):
            return number
        raise ValueError(f"{where}: {value!r} is not 'allow', 'kill' or an errno name")
    kind = type(value).__name__
    raise TypeError(f"{where}: an action is 'allow', 'kill' or an errno, not {kind}")


@dataclass(frozen=True, slots=True)
class SeccompPolicy:
    """A validated seccomp policy: presets plus user rules (syscall → action).

    ``Sandbox(seccomp=...)`` accepts a preset name, a rules mapping, a
    sequence of both, or a ``SeccompPolicy``.

    >>> p = SeccompPolicy.parse(("default", {"getpid": "EACCES"}))
    >>> p.presets, p.rules["getpid"] == errno.EACCES
    (('default',), True)
    """

    presets: tuple[str, ...] = ()
    rules: Mapping[str, Action] = field(default_factory=dict, hash=False)

    @classmethod
    def parse(cls, value: object) -> SeccompPolicy:
        if isinstance(value, SeccompPolicy):
            return value
        items: Iterable[object]
        if isinstance(value, (str, Mapping)):
            items = (value,)
        elif isinstance(value, Iterable):
            items = value
        else:
            raise TypeError(
                "seccomp must be a preset name, a mapping of syscall to action, or a sequence "
                f"of those, not {type(value).__name__}"
            )
        presets: list[str] = []
        rules: dict[str, Action] = {}
        for item in items:
            if isinstance(item, str):
                if item not in SECCOMP_PRESETS:
                    raise ValueError(
                        f"seccomp: unknown preset {item!r} (presets: {', '.join(SECCOMP_PRESETS)})"
                    )
                if item not in presets:
                    presets.append(item)
            elif isinstance(item, Mapping):
                for name, action in item.items():
                    if not isinstance(name, str) or not name.isidentifier():
                        raise ValueError(f"seccomp: {name!r} is not a syscall name")
                    rules[name] = _action(action, f"seccomp[{name!r}]")
            else:
                raise TypeError(f"seccomp: {item!r} is neither a preset name nor a rules mapping")
        if not presets and not rules:
            raise ValueError("seccomp is empty: name a preset or give rules")
        return cls(tuple(presets), rules)

    @property
    def kills(self) -> bool:
        """Whether a rule kills (so a SIGSYS death means seccomp)."""
        return "kill" in self.rules.values()

    def rule_list(self) -> list[_seccomp.Rule]:
        """The rules for libseccomp: presets first, minus what user rules override."""
        out: list[_seccomp.Rule] = []
        for preset in self.presets:
            for rule in _preset_rules(preset):
                if rule[0] not in self.rules and _seccomp.syscall_known(rule[0]):
                    out.append(rule)
        for name, action in self.rules.items():
            if not _seccomp.syscall_known(name):
                raise ValueError(f"seccomp: libseccomp does not know the syscall {name!r} here")
            if action != "allow" or self.presets:  # a bare "allow" is the default anyway
                out.append((name, action, ()))
        return out

    def compile(self) -> _seccomp.Program:
        """The BPF program, built by libseccomp (``ImportError`` without pyseccomp)."""
        return _seccomp.compile_filter(self.rule_list())


def seccomp_available() -> bool:
    """True when pyseccomp and the system libseccomp are usable."""
    return _seccomp.available()


def landlock_abi() -> int:
    """The kernel's Landlock ABI version (0: no Landlock)."""
    return _landlock.abi()


def _paths(value: object, field_name: str) -> tuple[str, ...]:
    if isinstance(value, (str, os.PathLike)):
        value = (value,)
    if not isinstance(value, Iterable):
        raise TypeError(f"{field_name} must be a sequence of paths, not {type(value).__name__}")
    out = []
    for p in value:
        if not isinstance(p, (str, os.PathLike)):
            raise TypeError(f"{field_name}: {p!r} is not a path")
        s = os.fspath(p)
        if not isinstance(s, str) or not s.startswith("/") or "\0" in s:
            raise ValueError(f"{field_name}: {s!r} must be an absolute path")
        out.append(os.path.normpath(s))
    return tuple(dict.fromkeys(out))


@dataclass(frozen=True, slots=True)
class Landlock:
    """Landlock filesystem rules (Linux 5.13+): everything else is denied.

    ``read_only`` paths (and what is below them) may be read, listed and
    executed; ``read_write`` paths may also be written, created in, removed
    from and renamed within. Paths are as the sandbox sees them (after its
    mounts); each must exist. ``required=False`` skips the fence on a kernel
    without Landlock instead of failing the spawn.

    >>> Landlock(read_only=("/usr", "/etc"), read_write=("/tmp",)).read_write
    ('/tmp',)
    """

    read_only: tuple[str, ...] | Iterable[str] = ()
    read_write: tuple[str, ...] | Iterable[str] = ()
    required: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "read_only", _paths(self.read_only, "landlock.read_only"))
        object.__setattr__(self, "read_write", _paths(self.read_write, "landlock.read_write"))
        if not isinstance(self.required, bool):
            raise TypeError("landlock.required must be a bool")

    def ruleset(self, abi_version: int) -> _landlock.Ruleset:
        handled = _landlock.fs_access_for_abi(abi_version)
        rules = [(p, _landlock.READ_ACCESS) for p in self.read_only]
        rules += [(p, handled) for p in self.read_write]
        return _landlock.Ruleset(handled, tuple(rules))


def parse_caps(value: object) -> frozenset[str] | Literal["all"]:
    """``keep_caps``: ``"all"`` or capability names → normalised lowercase names."""
    if value == "all":
        return "all"
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise TypeError(
            "keep_caps must be a set of capability names such as {'CAP_NET_RAW'} or 'all', "
            f"not {value!r}"
        )
    out = set()
    for name in value:
        if not isinstance(name, str):
            raise TypeError(f"keep_caps: {name!r} is not a capability name")
        try:
            out.add(_caps.CAP_NAMES[_caps.cap_number(name)])
        except ValueError:
            raise ValueError(f"keep_caps: unknown capability {name!r}") from None
    return frozenset(out)


def caps_mask(names: Iterable[str]) -> int:
    mask = 0
    for n in names:
        mask |= 1 << _caps.cap_number(n)
    return mask


# --- child-side steps ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NoNewPrivs:
    name: str = "no_new_privs"

    def run(self) -> None:
        _caps.set_no_new_privs()


@dataclass(frozen=True, slots=True)
class CapsBounding:
    """Before the uid switch: drop the bounding set (needs CAP_SETPCAP), keep caps across it."""

    keep: int
    last: int
    keepcaps: bool
    name: str = "capabilities (bounding set)"

    def run(self) -> None:
        _caps.drop_bounding(self.keep, self.last)
        if self.keepcaps:
            _caps.set_keepcaps(True)


@dataclass(frozen=True, slots=True)
class CapsFinal:
    """Effective = permitted = inheritable = ambient = the kept capabilities
    (and the bounding set, when no :class:`CapsBounding` ran before a uid switch)."""

    capset: _caps.CapSet
    last: int
    keepcaps: bool
    bounding: bool
    name: str = "capabilities"

    def run(self) -> None:
        if self.bounding:
            _caps.drop_bounding(self.capset.mask, self.last)
        self.capset.apply()
        if self.capset.mask:
            _caps.raise_ambient(self.capset.mask, self.last)
        if self.keepcaps:
            _caps.set_keepcaps(False)


@dataclass(frozen=True, slots=True)
class LandlockStep:
    ruleset: _landlock.Ruleset
    name: str = "landlock"

    def run(self) -> None:
        self.ruleset.apply()


@dataclass(frozen=True, slots=True)
class SeccompStep:
    program: _seccomp.Program
    name: str = "seccomp"

    def run(self) -> None:
        self.program.load()


def has_cap(cap: int) -> bool:
    return bool(_caps.status_caps("CapEff") >> cap & 1)


def cap_last() -> int:
    return _caps.cap_last_cap()


def capset(mask: int) -> _caps.CapSet:
    return _caps.CapSet(mask)


CAP_SETPCAP: Final = _caps.CAP_SETPCAP
CAP_SYS_ADMIN: Final = _caps.CAP_SYS_ADMIN
CAP_SYS_RESOURCE: Final = _caps.CAP_SYS_RESOURCE
