"""The :class:`Sandbox` spec: namespaces, ids, filesystem, network, environment, enter.

A ``Sandbox`` is a frozen, validated description. A bad spec raises
``TypeError``/``ValueError`` naming the field when it is constructed, before
any process exists. ``spawn(fn, sandbox=...)`` (and ``create_process``/
``run``) turn it into steps with :meth:`Sandbox.compile`::

    sb = Sandbox(
        namespaces={"user", "pid", "net", "uts"},
        hostname="box",
        mounts=(Bind("/", readonly=True), Tmpfs("/tmp"), Proc(), Dev()),
        network="loopback",
    )
    child = await spawn(work, sandbox=sb)

The child-side steps run in bubblewrap's fixed order::

    setns (enter=…)  →  fork into the joined pid ns  →  unshare (new ns with enter)
    → mount propagation private → staging root → binds/tmpfs/proc/dev/symlinks
    → read-only remounts → pivot_root + detach the old root → hostname/domainname
    → loopback up / veth address → uid/gid switch → cwd → environment (fn mode)

Parent-side steps (id maps, veth plumbing) run during the handshake, before
the child's "go". Joining comes first because it decides what the later
steps act upon (whose mount namespace, whose user namespace grants the
capabilities); see :mod:`aiospaces._enter` for how a pid namespace is joined.

The compile contract (for ``spawn``, ``create_process`` and ``run``)
-------------------------------------------------------------------

``compiled = sandbox.compile(flags)`` — call it inside the spawning
function, right before :func:`aiospaces._launch.launch`; ``flags`` are the
caller's extra ``CLONE_*`` bits (they become namespaces of the sandbox;
``ValueError`` if they clash with it). It may raise ``ValueError``,
``FileNotFoundError`` (a ``Bind`` source or ``chroot`` is missing),
``PermissionError`` (maps this caller cannot write) or
``ProcessLookupError`` (the ``enter`` target has exited). The result:

* ``compiled.flags`` — the clone flags to pass to ``launch``;
* ``compiled.maps`` — the :class:`~aiospaces.idmap.MapPlan` (or None) for ``maps=``;
* ``compiled.parent_steps`` — pass as ``parent_steps=``;
* ``compiled.child_steps`` — put into ``ChildPlan.steps`` (exec mode);
  ``compiled.fn_steps`` adds a step that sets ``os.environ`` (fn mode);
* ``compiled.env`` — ``None`` (inherit) or the complete environment for
  ``execve``;
* ``compiled.pass_fds`` — fds the child's steps need: add them to
  ``ChildPlan.pass_fds`` (the steps close them before the body runs);
* ``compiled.close()`` — closes those fds in the parent; call it once
  ``launch`` returned or raised (``with sandbox.compile(flags) as c:``).

Child-side failures come back as :class:`~aiospaces.SpawnError` whose
``step`` names the step (``"bind /usr /usr (read-only)"``, ``"setns net,uts"``,
``"pivot_root"``) and whose ``filename`` is the path as the spec named it.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import resource
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, Literal, Self

from . import cgroups as _cg
from . import hardening as _hd
from ._child import Step
from ._enter import (
    NS_FLAG,
    NS_ORDER,
    EnterTarget,
    ForkIntoPidns,
    HasPidfd,
    SetNs,
    Unshare,
    differing,
    open_target,
)
from ._errors import SpawnError
from ._launch import Launched, ParentStep
from ._linux import constants as C
from ._linux import setdomainname, sethostname
from ._mounts import (
    MOUNT_KINDS,
    Bind,
    Dev,
    FinishRoot,
    MakePrivate,
    Mount,
    NewRoot,
    Proc,
    ReadOnly,
    Symlink,
    Tmpfs,
    check_path,
    mount_steps,
    staging_base,
)
from ._netns import (
    NetworkMode,
    Veth,
    VethPlumbing,
    have_pyroute2,
    loopback_step,
    unique_host_ifname,
    veth_inside_step,
)
from .hardening import Landlock, SeccompPolicy
from .idmap import MapPlan, MapSpec, parse_map, plan_maps
from .limits import Rlimit, SandboxGuard, check_raisable, parse_rlimits, parse_size

__all__ = [
    "Bind",
    "CompiledSandbox",
    "Dev",
    "Landlock",
    "Mount",
    "Proc",
    "ReadOnly",
    "Sandbox",
    "Symlink",
    "Tmpfs",
    "Veth",
]

NAMESPACES: Final = ("user", "pid", "mnt", "net", "uts", "ipc", "cgroup", "time")
_ALIASES: Final = {
    "mount": "mnt",
    "newns": "mnt",
    "newuser": "user",
    "newpid": "pid",
    "newnet": "net",
    "newuts": "uts",
    "newipc": "ipc",
}
_HOST_NAME_MAX: Final = 64
_RLIM_INFINITY: Final = resource.RLIM_INFINITY
# Sandbox.untrusted(): the system's read-only view and a minimal /etc.
_SYSTEM_DIRS: Final = ("/usr", "/lib", "/lib32", "/lib64", "/libx32", "/bin", "/sbin")
_ETC_MINIMAL: Final = (
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/localtime",
    "/etc/nsswitch.conf",
    "/etc/alternatives",
)


def _names(value: object, field_name: str) -> frozenset[str]:
    if isinstance(value, str):
        value = (value,)
    if not isinstance(value, Iterable):
        raise TypeError(
            f"{field_name} must be a set of namespace names such as {{'user', 'pid'}}, "
            f"not {type(value).__name__}"
        )
    out: set[str] = set()
    for item in value:
        if not isinstance(item, str):
            raise TypeError(f"{field_name}: {item!r} is not a namespace name (str)")
        name = _ALIASES.get(item, item)
        if name == "all":
            out.update(NAMESPACES)
        elif name in NAMESPACES:
            out.add(name)
        else:
            raise ValueError(
                f"{field_name}: unknown namespace {item!r}; "
                f"expected some of {', '.join(NAMESPACES)} (or 'mount', 'all')"
            )
    return frozenset(out)


def _flags_of(names: Iterable[str]) -> int:
    flags = 0
    for n in names:
        flags |= NS_FLAG[n]
    return flags


def _names_of(flags: int) -> frozenset[str]:
    return frozenset(n for n, f in NS_FLAG.items() if flags & f)


def _id(value: object, field_name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{field_name} must be an int, not {type(value).__name__}")
    if not 0 <= value <= 2**32 - 2:
        raise ValueError(f"{field_name} {value} is not a valid id")
    return value


def _text(value: object, field_name: str, limit: int) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"{field_name} must be a str, not {type(value).__name__}")
    raw = value.encode()
    if not raw or len(raw) > limit or b"\0" in raw:
        raise ValueError(f"{field_name} {value!r} must be 1 to {limit} bytes without NUL")
    return value


def _caps_net_admin() -> bool:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> 12 & 1)  # CAP_NET_ADMIN
    return False  # pragma: no cover


@dataclass(frozen=True, slots=True)
class Sandbox:
    """A frozen, validated isolation spec for ``spawn``/``create_process``/``run``.

    Namespaces (``namespaces=``): a set of ``"user" "pid" "mnt"`` (or
    ``"mount"``) ``"net" "uts" "ipc" "cgroup" "time"``, or ``"all"``. Some
    fields add the namespace they need: ``mounts``/``chroot`` add ``mnt``,
    ``hostname``/``domainname`` add ``uts``, a ``network`` other than
    ``"host"`` adds ``net``. Unprivileged callers include ``"user"``.

    Ids: ``uid_map``/``gid_map`` take every format of
    :func:`aiospaces.idmap.parse_map`; ``map_zero`` (default: True when a
    new user namespace gets no map) maps your own ids to 0. ``uid``/``gid``
    are what the child switches to at the end of its setup (they must be
    mapped inside).

    Filesystem: ``mounts`` builds a new root on an empty tmpfs, then
    ``pivot_root``\\ s into it and detaches the old root (see
    :mod:`aiospaces._mounts`); ``chroot=`` starts that root from an existing
    directory instead (pyspaces' ``Chroot``, but with ``pivot_root``).
    ``propagation`` (``"private"`` or ``"slave"``) keeps the sandbox's
    mounts from reaching the host. ``cwd`` defaults to ``/`` in a new root.

    Network: ``"none"`` (loopback down), ``"loopback"`` (the default with a
    new net namespace), ``"host"`` (the default otherwise), or a
    :class:`Veth` (root only).

    Environment: ``env`` is added to the caller's (``clear_env=True``:
    replaces it).

    Enter: ``enter`` is a ``Child``, a ``Process`` (anything with ``pid``
    and ``pidfd``) or a pid whose namespaces the child joins: ``join`` (by
    default every namespace of the target that differs from the caller's).
    Namespaces in ``namespaces`` are then made new after joining (not
    ``user``, ``pid`` or ``time``).

    Limits (:mod:`aiospaces.limits`, :mod:`aiospaces.cgroups`): ``rlimits``
    (``{"NOFILE": 256, "CPU": 2}``); cgroup limits ``memory_max`` and
    ``memory_swap_max`` (bytes, or ``"512M"``), ``pids_max``, ``cpu_max``
    (a fraction of one CPU: ``0.5``); ``cgroup`` (``True``: a cgroup even
    without limits, to kill and account the whole sandbox; ``"v1"``/``"v2"``
    forces a version); ``timeout`` (seconds: the whole sandbox is killed and
    ``result()`` raises ``TimeoutError``).

    Hardening (:mod:`aiospaces.hardening`): ``no_new_privs`` (default True),
    ``keep_caps`` (default: drop every capability; ``"all"``: leave them),
    ``seccomp`` (``"default"``, ``"no-network"``, ``{"syscall": action}``, or a
    sequence of those), ``landlock`` (a :class:`Landlock`). They are applied
    last, seccomp at the very end. :meth:`untrusted` combines them all.

    >>> Sandbox(namespaces={"user", "pid"}, mounts=(Proc(),)).namespaces == {"user", "pid", "mnt"}
    True
    >>> Sandbox(mounts=(Proc(),))
    Traceback (most recent call last):
    ...
    ValueError: mounts: Proc('/proc') needs a new pid namespace: add 'pid' to namespaces
    """

    namespaces: frozenset[str] | Iterable[str] = frozenset()
    uid_map: MapSpec = None
    gid_map: MapSpec = None
    map_zero: bool | None = None
    uid: int | None = None
    gid: int | None = None
    hostname: str | None = None
    domainname: str | None = None
    mounts: tuple[Mount, ...] = ()
    chroot: str | os.PathLike[str] | None = None
    cwd: str | os.PathLike[str] | None = None
    propagation: Literal["private", "slave"] = "private"
    network: NetworkMode | None = None
    env: Mapping[str, str] | None = field(default=None, hash=False)
    clear_env: bool = False
    enter: EnterTarget | None = None
    join: frozenset[str] | Iterable[str] | None = None
    # -- limits (aiospaces.limits, aiospaces.cgroups) --
    rlimits: Mapping[str, Any] | tuple[Rlimit, ...] | None = field(default=None, hash=False)
    memory_max: int | str | None = None
    memory_swap_max: int | str | None = None
    pids_max: int | None = None
    cpu_max: float | None = None
    cgroup: bool | Literal["v1", "v2"] | None = None
    timeout: float | None = None
    # -- hardening (aiospaces.hardening) --
    no_new_privs: bool = True
    keep_caps: frozenset[str] | Iterable[str] | Literal["all"] = frozenset()
    seccomp: SeccompPolicy | str | Mapping[str, Any] | Iterable[Any] | None = field(
        default=None, hash=False
    )
    landlock: Landlock | None = None

    def __post_init__(self) -> None:
        put = object.__setattr__
        ns = set(_names(self.namespaces, "namespaces"))
        self._check_limits()

        # -- mounts ---------------------------------------------------------------
        mounts = self.mounts
        if isinstance(mounts, Mount):
            mounts = (mounts,)
        if isinstance(mounts, (str, bytes)) or not isinstance(mounts, Iterable):
            raise TypeError(f"mounts must be a tuple of mounts, not {type(mounts).__name__}")
        mounts = tuple(mounts)
        for i, m in enumerate(mounts):
            if type(m) not in MOUNT_KINDS:
                kinds = ", ".join(k.__name__ for k in MOUNT_KINDS)
                raise TypeError(f"mounts[{i}]: unknown mount kind {type(m).__name__} ({kinds})")
            if m.target == "/" and not isinstance(m, (Bind, Tmpfs, ReadOnly)):
                raise ValueError(f"mounts[{i}]: {type(m).__name__} cannot replace the root '/'")
        chroot = None
        if self.chroot is not None:
            chroot = check_path(self.chroot, "chroot", inside=False)
            for i, m in enumerate(mounts):
                if m.target == "/" and isinstance(m, (Bind, Tmpfs)):
                    raise ValueError(
                        f"mounts[{i}] replaces '/', and chroot={chroot!r} already sets the root"
                    )
        put(self, "chroot", chroot)
        put(self, "mounts", mounts)
        if mounts or chroot:
            ns.add("mnt")
        if self.propagation not in ("private", "slave"):
            raise ValueError(f"propagation must be 'private' or 'slave', not {self.propagation!r}")
        cwd = None if self.cwd is None else check_path(self.cwd, "cwd", inside=False)
        put(self, "cwd", cwd)

        # -- identity -------------------------------------------------------------------
        put(self, "hostname", _text(self.hostname, "hostname", _HOST_NAME_MAX))
        put(self, "domainname", _text(self.domainname, "domainname", _HOST_NAME_MAX))
        if self.hostname is not None or self.domainname is not None:
            ns.add("uts")

        # -- network ----------------------------------------------------------------------
        # Kept as given (None = the default for the namespaces): compile(flags)
        # re-validates with more namespaces, where None may then mean "loopback".
        net = self.network
        if isinstance(net, Veth):
            if os.geteuid() != 0 or not _caps_net_admin():
                raise PermissionError(
                    "network: a Veth needs root (CAP_NET_ADMIN in the host's network "
                    "namespace) to create the pair; unprivileged, use 'loopback' or 'none'"
                )
            if not have_pyroute2():
                raise ImportError("network: a Veth needs pyroute2: pip install 'aiospaces[net]'")
        elif net is not None and net not in ("none", "loopback", "host"):
            raise ValueError(f"network must be 'none', 'loopback', 'host' or a Veth, not {net!r}")
        if net == "host" and "net" in ns:
            raise ValueError("network='host' contradicts a new 'net' namespace in namespaces")
        if net is not None and net != "host":
            ns.add("net")

        # -- environment --------------------------------------------------------------------
        if not isinstance(self.clear_env, bool):
            raise TypeError(f"clear_env must be a bool, not {type(self.clear_env).__name__}")
        if self.env is not None:
            if not isinstance(self.env, Mapping):
                raise TypeError(
                    f"env must be a mapping of str to str, not {type(self.env).__name__}"
                )
            env: dict[str, str] = {}
            for k, v in self.env.items():
                if not isinstance(k, str) or not isinstance(v, str):
                    raise TypeError(f"env: {k!r}: keys and values must be str")
                if not k or "=" in k or "\0" in k or "\0" in v:
                    raise ValueError(f"env: {k!r}: a name is non-empty without '=' or NUL")
                env[k] = v
            put(self, "env", env)

        # -- enter --------------------------------------------------------------------------
        join: frozenset[str] | None = None
        if self.enter is not None:
            target = self.enter
            if isinstance(target, bool) or not isinstance(target, (int, HasPidfd)):
                raise TypeError(
                    "enter must be a Child, a Process (with pid and pidfd) or a pid, "
                    f"not {type(target).__name__}"
                )
            if isinstance(target, int) and target <= 0:
                raise ValueError(f"enter: {target} is not a pid")
            if self.join is not None:
                join = _names(self.join, "join")
                if not join:
                    raise ValueError("join is empty: name the namespaces to enter")
                both = join & ns
                if both:
                    raise ValueError(
                        f"namespaces {sorted(both)} are both joined (join) and made new "
                        "(namespaces, or implied by mounts/hostname/network)"
                    )
            bad = ns & {"user", "pid", "time"}
            if bad:
                raise ValueError(
                    f"namespaces {sorted(bad)} cannot be made new when entering another "
                    "process: join them instead, or do not enter"
                )
            if isinstance(net, Veth):
                raise ValueError("network: a Veth cannot be combined with enter")
        elif self.join is not None:
            raise ValueError("join needs enter= (the process whose namespaces to join)")
        put(self, "join", join)

        # -- ids -----------------------------------------------------------------------------
        if self.map_zero is not None and not isinstance(self.map_zero, bool):
            raise TypeError(f"map_zero must be a bool or None, not {type(self.map_zero).__name__}")
        umap = parse_map(self.uid_map, field="uid_map")
        gmap = parse_map(self.gid_map, field="gid_map")
        if (umap or gmap or self.map_zero) and "user" not in ns:
            raise ValueError("uid_map/gid_map/map_zero need a new user namespace: add 'user'")
        # Stored normalised: "no map" ("", [], False) is None, so map_zero's
        # default applies and the frozen spec stays hashable.
        put(self, "uid_map", umap)
        put(self, "gid_map", gmap)
        uid = _id(self.uid, "uid")
        gid = _id(self.gid, "gid")
        if "user" in ns:
            zero = self._map_zero(ns)
            for name, value, idm, own in (
                ("uid", uid, umap, os.getuid()),
                ("gid", gid, gmap, os.getgid()),
            ):
                if value is None:
                    continue
                if idm is None:
                    mapped = zero and value == 0
                else:
                    mapped = any(r.inside <= value < r.inside + r.count for r in idm.ranges)
                if not mapped:
                    raise ValueError(
                        f"{name} {value} is not mapped in the new user namespace "
                        f"(own {name} {own} maps to 0 with map_zero)"
                    )

        # -- consistency ------------------------------------------------------------------------
        joined = join or frozenset()
        for i, m in enumerate(mounts):
            if isinstance(m, Proc) and "pid" not in ns and "pid" not in joined:
                raise ValueError(
                    f"mounts: Proc({m.dst!r}) needs a new pid namespace: add 'pid' to namespaces"
                    if self.enter is None
                    else f"mounts[{i}]: Proc({m.dst!r}) needs the joined pid namespace: add "
                    "'pid' to join"
                )
        put(self, "namespaces", frozenset(ns))

    def _check_limits(self) -> None:
        put = object.__setattr__
        rl = self.rlimits
        if not (isinstance(rl, tuple) and all(isinstance(r, Rlimit) for r in rl)):
            put(self, "rlimits", parse_rlimits(rl))
        mem = parse_size(self.memory_max, "memory_max")
        if mem is not None and mem < 1 << 20:
            raise ValueError(f"memory_max {mem} is below 1 MiB: the child could not even start")
        put(self, "memory_max", mem)
        put(self, "memory_swap_max", parse_size(self.memory_swap_max, "memory_swap_max"))
        if self.pids_max is not None:
            if isinstance(self.pids_max, bool) or not isinstance(self.pids_max, int):
                raise TypeError(f"pids_max must be an int, not {type(self.pids_max).__name__}")
            if self.pids_max < 1:
                raise ValueError(f"pids_max must be at least 1, not {self.pids_max}")
        if self.cpu_max is not None:
            if isinstance(self.cpu_max, bool) or not isinstance(self.cpu_max, (int, float)):
                raise TypeError(f"cpu_max must be a number, not {type(self.cpu_max).__name__}")
            ncpu = os.cpu_count() or 1
            if not 0.01 <= self.cpu_max <= ncpu:
                raise ValueError(
                    f"cpu_max is a fraction of one CPU between 0.01 and {ncpu} (this host's "
                    f"CPUs), not {self.cpu_max}"
                )
            put(self, "cpu_max", float(self.cpu_max))
        if self.cgroup not in (None, True, False, "v1", "v2"):
            raise ValueError(f"cgroup must be None, a bool, 'v1' or 'v2', not {self.cgroup!r}")
        if self.cgroup is False and self.cgroup_limits().names():
            raise ValueError("cgroup=False contradicts memory_max/memory_swap_max/pids_max/cpu_max")
        if self.timeout is not None:
            if isinstance(self.timeout, bool) or not isinstance(self.timeout, (int, float)):
                raise TypeError(f"timeout must be a number of seconds, not {self.timeout!r}")
            if not self.timeout > 0:
                raise ValueError(f"timeout must be positive, not {self.timeout}")
            put(self, "timeout", float(self.timeout))
        if not isinstance(self.no_new_privs, bool):
            raise TypeError(f"no_new_privs must be a bool, not {type(self.no_new_privs).__name__}")
        put(self, "keep_caps", _hd.parse_caps(self.keep_caps))
        if self.seccomp is not None:
            policy = SeccompPolicy.parse(self.seccomp)
            if not _hd.seccomp_available():
                raise ImportError(
                    "seccomp needs pyseccomp over the system libseccomp: "
                    "pip install 'aiospaces[seccomp]' (Debian: apt install libseccomp2)"
                )
            put(self, "seccomp", policy)
        if self.landlock is not None and not isinstance(self.landlock, Landlock):
            raise TypeError(f"landlock must be a Landlock, not {type(self.landlock).__name__}")

    @classmethod
    def untrusted(
        cls,
        *,
        memory_max: int | str | None = "512M",
        pids_max: int | None = 64,
        cpu_max: float | None = 1.0,
        timeout: float | None = None,
        python: bool = True,
        mounts: Iterable[Mount] = (),
        tmp_size: str = "64m",
        **overrides: Any,
    ) -> Sandbox:
        """Every fence at once: the one-line answer to "run this code I do not trust".

        >>> sb = Sandbox.untrusted(timeout=10)  # doctest: +SKIP
        >>> await (await spawn(work, sandbox=sb, result_format="json")).result()  # doctest: +SKIP

        Each choice, and why:

        * **all namespaces** (user, pid, mnt, net, uts, ipc, cgroup, time):
          root inside is the caller outside; the code sees only its own
          processes (and dies whole with its PID 1), its own hostname
          (``"sandbox"``), IPC objects and cgroup view.
        * **filesystem**: a new root on an empty tmpfs with a read-only view of
          ``/usr``, ``/lib*``, ``/bin``, ``/sbin`` (symlinks on merged-/usr
          hosts) and a minimal ``/etc`` (the dynamic loader's cache and
          config, ``localtime``, ``nsswitch.conf``, ``alternatives``: no
          ``passwd``, ``shadow``, ``hosts`` or keys); with ``python=True``
          (for ``spawn``: ``fn`` may import lazily) the interpreter's prefixes
          and ``sys.path`` directories, read-only; a private ``/tmp`` (a tmpfs
          of ``tmp_size``), a fresh ``/proc`` and a minimal ``/dev``. Nothing
          else of the host exists inside; ``mounts`` adds more.
        * **no network**: a new network namespace with loopback down
          (``network="none"``), and the ``"no-network"`` seccomp preset: only
          AF_UNIX sockets can even be made.
        * **seccomp** ``"default"``: no ptrace, kernel modules, kexec, bpf,
          perf, keyrings, userfaultfd, io_uring, mount or new namespaces
          (pyseccomp is required: ``pip install 'aiospaces[seccomp]'``).
        * **no_new_privs**, **every capability dropped** (bounding set too).
        * **Landlock** (where the kernel has it): everything read-only except
          ``/tmp`` and ``/dev`` — a second fence should a mount be writable.
        * **limits**: ``memory_max`` 512 MiB without swap, ``pids_max`` 64,
          ``cpu_max`` one CPU — through cgroups where :func:`aiospaces.cgroups.available`
          can enforce them; elsewhere (unprivileged without a delegated v2
          subtree) memory falls back to ``RLIMIT_AS`` per process, and the
          pid and CPU limits are left out rather than failing the spawn.
          Always: ``RLIMIT_NOFILE`` 256, ``RLIMIT_FSIZE`` 64 MiB, no core
          dumps. ``timeout`` (none by default) kills it all.

        ``overrides`` replace any other field (``hostname=``, ``env=``...);
        pass ``None`` for a limit to leave it out. Values travel back safest
        with ``spawn(..., result_format="json")`` (no unpickling).
        """
        import sys  # noqa: PLC0415 - only the preset reads the interpreter's layout

        binds: list[Mount] = []
        seen: list[str] = []

        def add(path: str) -> None:
            path = os.path.normpath(path)
            if any(path == s or path.startswith(s.rstrip("/") + "/") for s in seen):
                return
            if os.path.islink(path) and os.path.dirname(path) == "/":
                binds.append(Symlink(os.readlink(path), path))
            elif os.path.exists(path):
                binds.append(Bind(path, readonly=True))
            else:
                return
            seen.append(path)

        for d in _SYSTEM_DIRS:
            add(d)
        for f in _ETC_MINIMAL:
            add(f)
        if python:
            for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, *sys.path):
                if p and os.path.isabs(p) and os.path.isdir(p):
                    add(p)
        readable = [m.target for m in binds if isinstance(m, Bind)]
        cg = _cg.available().limits
        rlimits: dict[str, Any] = {"NOFILE": 256, "FSIZE": 64 << 20, "CORE": 0}
        kwargs: dict[str, Any] = {}
        if memory_max is not None:
            if "memory_max" in cg:
                kwargs["memory_max"] = memory_max
                if "memory_swap_max" in cg:
                    kwargs["memory_swap_max"] = 0
            else:
                rlimits["AS"] = parse_size(memory_max, "memory_max")
        if pids_max is not None and "pids_max" in cg:
            kwargs["pids_max"] = pids_max
        if cpu_max is not None and "cpu_max" in cg:
            kwargs["cpu_max"] = cpu_max
        spec: dict[str, Any] = {
            "namespaces": frozenset(NAMESPACES),
            "hostname": "sandbox",
            "network": "none",
            # /tmp first: a bind below it (a venv in /tmp) must land on top of it
            "mounts": (Tmpfs("/tmp", size=tmp_size), Proc(), Dev(), *binds, *mounts),
            "cwd": "/tmp",
            "rlimits": rlimits,
            "timeout": timeout,
            "no_new_privs": True,
            "keep_caps": frozenset(),
            "seccomp": ("default", "no-network"),
            "landlock": Landlock(
                read_only=("/", *readable), read_write=("/tmp", "/dev"), required=False
            ),
            **kwargs,
        }
        spec.update(overrides)
        return cls(**spec)

    def cgroup_limits(self) -> _cg.CgroupLimits:
        """The cgroup limits of this spec (:class:`aiospaces.cgroups.CgroupLimits`)."""
        return _cg.CgroupLimits(
            self.memory_max,  # type: ignore[arg-type]  # normalised to int in __post_init__
            self.memory_swap_max,  # type: ignore[arg-type]
            self.pids_max,
            self.cpu_max,
        )

    def _map_zero(self, ns: Iterable[str] | None = None) -> bool:
        """The effective ``map_zero``: explicit, or True for a map-less new user ns."""
        if self.map_zero is not None:
            return self.map_zero
        names = self.namespaces if ns is None else ns
        return "user" in names and self.uid_map is None and self.gid_map is None

    # -- compiling ------------------------------------------------------------------------

    @property
    def network_mode(self) -> NetworkMode:
        """The effective network: ``network``, or its default for :attr:`namespaces`."""
        if self.network is not None:
            return self.network
        return "loopback" if "net" in self.namespaces else "host"

    @property
    def flags(self) -> int:
        """The ``CLONE_NEW*`` flags of :attr:`namespaces`."""
        return _flags_of(self.namespaces)

    def compile(self, flags: int = 0) -> CompiledSandbox:
        """Resolve the spec into flags, maps and steps (see the module docstring).

        Call it at spawn time: it reads the host (bind sources, the
        ``enter`` target, which maps this caller can write) and may open a
        pidfd, which :meth:`CompiledSandbox.close` closes.

        >>> c = Sandbox(namespaces={"user", "uts"}, hostname="box").compile()
        >>> [s.name for s in c.child_steps]
        ['hostname']
        >>> c.close()
        """
        extra = _names_of(flags & C.ALL_NAMESPACES)
        if extra - set(self.namespaces):
            if self.enter is not None:
                raise ValueError(
                    "flags: pass new namespaces in the Sandbox, not in flags, when entering"
                )
            return dataclasses.replace(self, namespaces=frozenset(self.namespaces) | extra).compile(
                flags
            )
        rest = flags & ~C.ALL_NAMESPACES
        ns: frozenset[str] = frozenset(self.namespaces)
        steps: list[Step] = []
        parent_steps: list[ParentStep] = []
        pass_fds: list[int] = []
        owned: list[int] = []
        clone_ns = ns
        joined_ns: tuple[str, ...] = ()
        try:
            # -- enter: setns, fork into the pid ns, unshare the rest ----------------
            if self.enter is not None:
                pid, fd = open_target(self.enter)
                owned.append(fd)
                wanted = self.join if self.join is not None else frozenset(NS_ORDER) - ns
                names = differing(pid, tuple(n for n in NS_ORDER if n in wanted))
                joined_ns = names
                if names:
                    pass_fds.append(fd)
                    steps.append(SetNs(fd, _flags_of(names), "setns " + ",".join(names)))
                    if "pid" in names:
                        steps.append(ForkIntoPidns())
                if ns:
                    steps.append(Unshare(_flags_of(ns), "unshare " + ",".join(sorted(ns))))
                clone_ns = frozenset()

            # -- filesystem ---------------------------------------------------------------
            if "mnt" in ns:
                prop = C.MS_PRIVATE if self.propagation == "private" else C.MS_SLAVE
                steps.append(MakePrivate(C.MS_REC | prop))
            mounts = self.mounts
            if self.chroot is not None:
                mounts = (Bind(os.fspath(self.chroot), "/"), *mounts)
            new_root = bool(mounts)
            if new_root:
                base = staging_base()
                steps.append(NewRoot(os.fsencode(base), base))
                steps.extend(mount_steps(mounts))  # type: ignore[arg-type]
                steps.append(FinishRoot())

            # -- identity, network -----------------------------------------------------
            if self.hostname is not None:
                steps.append(_SetName(self.hostname, False, "hostname"))
            if self.domainname is not None:
                steps.append(_SetName(self.domainname, True, "domainname"))
            net = self.network_mode
            if net == "loopback" or isinstance(net, Veth):
                steps.append(loopback_step())
            if isinstance(net, Veth):
                host_ifname = net.host_ifname or unique_host_ifname()
                parent_steps.append(VethPlumbing(net, host_ifname))
                steps.append(veth_inside_step(net))

            # -- ids ---------------------------------------------------------------------
            maps: MapPlan | None = None
            if "user" in clone_ns:
                maps = plan_maps(self.uid_map, self.gid_map, self._map_zero())
            # -- hardening, part 1: the bounding set while we still may -------------
            # (a uid switch drops CAP_SETPCAP; KEEPCAPS keeps the kept ones across it)
            in_userns = "user" in clone_ns or "user" in joined_ns
            final, caps_steps = self._hardening_steps(in_userns)
            steps.extend(caps_steps)

            if self.uid is not None or self.gid is not None:
                allow_setgroups = not (maps is not None and maps.deny_setgroups)
                steps.append(_SwitchIds(self.uid, self.gid, allow_setgroups))

            cwd = os.fspath(self.cwd) if self.cwd is not None else ("/" if new_root else None)
            if cwd is not None:
                steps.append(_Chdir(os.fsencode(cwd), cwd, f"cwd {cwd}"))

            env: dict[str, str] | None = None
            if self.clear_env:
                env = dict(self.env or {})
            elif self.env:
                env = {**os.environ, **self.env}

            # -- limits: the cgroup last (nothing after it can fail) -------------------
            cgroup, guard = self._cgroup_and_guard()
            if guard is not None:  # last: it starts the timeout and watches the child
                parent_steps.append(guard)
        except BaseException:
            for fd in owned:
                os.close(fd)
            raise
        return CompiledSandbox(
            flags=_flags_of(clone_ns) | rest,
            maps=maps,
            child_steps=(*steps, *final),
            parent_steps=tuple(parent_steps),
            env=env,
            pass_fds=tuple(pass_fds),
            _owned=owned,
            final_steps=final,
            cgroup=cgroup,
            guard=guard,
        )

    def _hardening_steps(self, in_userns: bool) -> tuple[tuple[Step, ...], list[Step]]:
        """``(final steps, steps before the uid switch)``: rlimits and the fences."""
        final: list[Step] = []
        early: list[Step] = []
        rlimits: tuple[Rlimit, ...] = self.rlimits  # type: ignore[assignment]
        check_raisable(rlimits, _hd.has_cap(_hd.CAP_SYS_RESOURCE))
        final.extend(rlimits)
        if self.no_new_privs:
            final.append(_hd.NoNewPrivs())
        if self.landlock is not None:
            abi = _hd.landlock_abi()
            if abi:
                final.append(_hd.LandlockStep(self.landlock.ruleset(abi)))
            elif self.landlock.required:
                from ._linux._landlock import unavailable_reason  # noqa: PLC0415

                raise SpawnError(
                    errno.EOPNOTSUPP, "Landlock is not available", step="landlock",
                    hint=unavailable_reason() + "; or Landlock(..., required=False)",
                )  # fmt: skip
        if self.keep_caps != "all":
            keep = _hd.caps_mask(self.keep_caps)
            last = _hd.cap_last()
            keepcaps = bool(keep) and self.uid is not None
            # Without CAP_SETPCAP (unprivileged, no user namespace) the bounding set
            # stays: no_new_privs then keeps execve from using it.
            bounding = in_userns or _hd.has_cap(_hd.CAP_SETPCAP)
            switch = self.uid is not None or self.gid is not None
            if bounding and switch:  # a uid switch drops CAP_SETPCAP: do it before
                early.append(_hd.CapsBounding(keep, last, keepcaps))
            final.append(_hd.CapsFinal(_hd.capset(keep), last, keepcaps, bounding and not switch))
        if self.seccomp is not None:
            policy: SeccompPolicy = self.seccomp  # type: ignore[assignment]
            final.append(_hd.SeccompStep(policy.compile()))
        return tuple(final), early

    def _cgroup_and_guard(self) -> tuple[_cg.SandboxCgroup | None, SandboxGuard | None]:
        limits = self.cgroup_limits()
        cgroup = None
        if limits.names() or self.cgroup not in (None, False):
            version = {"v1": 1, "v2": 2}.get(self.cgroup) if isinstance(self.cgroup, str) else None
            cgroup = _cg.create(limits, version)  # type: ignore[arg-type]
        rlimits: tuple[Rlimit, ...] = self.rlimits  # type: ignore[assignment]
        cpu = next((r for r in rlimits if r.limit_name == "CPU"), None)
        cpu_hard = cpu.hard if cpu is not None and cpu.hard != _RLIM_INFINITY else None
        kills = self.seccomp is not None and self.seccomp.kills  # type: ignore[union-attr]
        if cgroup is None and self.timeout is None and cpu_hard is None and not kills:
            return None, None
        guard = SandboxGuard(
            cgroup=cgroup, timeout=self.timeout, cpu_hard=cpu_hard, seccomp_kills=kills
        )
        return cgroup, guard


@dataclass(frozen=True, slots=True)
class CompiledSandbox:
    """What :meth:`Sandbox.compile` returns; see the module docstring for its use."""

    flags: int
    maps: MapPlan | None
    child_steps: tuple[Step, ...]
    parent_steps: tuple[ParentStep, ...]
    env: dict[str, str] | None
    pass_fds: tuple[int, ...]
    _owned: list[int] = field(repr=False)
    # The hardening steps at the end of child_steps (seccomp last): fn_steps
    # puts the environment step before them.
    final_steps: tuple[Step, ...] = ()
    # The sandbox's cgroup (made by compile) and the guard that times it out,
    # reads its OOM counter and removes it once the child is reaped.
    cgroup: _cg.SandboxCgroup | None = None
    guard: SandboxGuard | None = None

    @property
    def fn_steps(self) -> tuple[Step, ...]:
        """``child_steps`` plus, when ``env`` is set, one that sets ``os.environ``
        (before the hardening steps: seccomp stays the very last)."""
        if self.env is None:
            return self.child_steps
        setup = self.child_steps[: len(self.child_steps) - len(self.final_steps)]
        return (*setup, _SetEnviron(tuple(self.env.items())), *self.final_steps)

    @property
    def cgroup_fd(self) -> int:
        """Pass as ``launch(cgroup_fd=...)``: a cgroup v2 leaf for CLONE_INTO_CGROUP, or -1.

        Opened on first use, closed by :meth:`close`.
        """
        if self.cgroup is None or self.cgroup.version != 2:
            return -1
        return self.cgroup.open_fd()

    def supervise(self, launched: Launched) -> SandboxGuard | None:
        """Tell the guard about the launched child; return it (None without one).

        Optional: the guard (a parent step) already attaches, times out and
        cleans up on its own; with this it also learns which SIGKILLs the
        parent sent and removes the cgroup as soon as the child is reaped.
        Await ``guard.settled()`` after reaping to know the cgroup is gone.
        """
        if self.guard is not None:
            self.guard.supervise(launched)
        return self.guard

    def close(self) -> None:
        """Close the fds this compile opened (idempotent); remove the cgroup if
        no child ever got into it (the spawn failed before the guard ran)."""
        while self._owned:
            os.close(self._owned.pop())
        if self.cgroup is not None:
            self.cgroup.close_fd()
        if self.guard is not None:
            self.guard.release()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# --- small child-side steps ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _SetName:
    value: str
    domain: bool
    name: str

    def run(self) -> None:
        if self.domain:
            setdomainname(self.value)
        else:
            sethostname(self.value)


@dataclass(frozen=True, slots=True)
class _SwitchIds:
    uid: int | None
    gid: int | None
    setgroups: bool
    name: str = "uid/gid"

    def run(self) -> None:
        if self.gid is not None:
            if self.setgroups:
                os.setgroups([])
            os.setresgid(self.gid, self.gid, self.gid)
        if self.uid is not None:
            os.setresuid(self.uid, self.uid, self.uid)


@dataclass(frozen=True, slots=True)
class _Chdir:
    path: bytes
    where: str
    name: str

    def run(self) -> None:
        try:
            os.chdir(self.path)
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, self.where) from None


@dataclass(frozen=True, slots=True)
class _SetEnviron:
    items: tuple[tuple[str, str], ...]
    name: str = "environment"

    def run(self) -> None:
        os.environ.clear()
        os.environ.update(self.items)
