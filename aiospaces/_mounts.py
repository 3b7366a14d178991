"""Mount kinds of a :class:`~aiospaces.Sandbox` and the child-side steps they compile to.

The public kinds (:class:`Bind`, :class:`Tmpfs`, :class:`Proc`, :class:`Dev`,
:class:`Symlink`, :class:`ReadOnly`) are frozen, validated descriptions:
absolute, normalised paths, no ``..`` in a destination. :func:`root_steps`
turns a tuple of them into frozen step objects whose ``run()`` only makes
syscalls with bytes prepared here, in the parent.

How the new root is built (bubblewrap's sequence)::

    mount --make-rprivate /                    (propagation: nothing leaks back)
    mount -t tmpfs tmpfs BASE                  (BASE: /tmp of this mount namespace)
    mkdir BASE/newroot BASE/oldroot; bind BASE/newroot onto itself
    pivot_root BASE BASE/oldroot; chdir /      (host tree now at /oldroot)
    each mount: source /oldroot/SRC → target /newroot/DST
    read-only remounts
    umount -l /oldroot                         (the host tree is unreachable)
    chdir /newroot; pivot_root . .; umount -l .; chdir /

The final ``pivot_root(".", ".")`` stacks the old root on top of the new
one, and the lazy unmount removes it: nothing of the host's tree stays
attached, so ``..`` from ``/`` is ``/`` and no fd or path leads out (unlike
``chroot``, which a process with ``CAP_SYS_CHROOT`` can escape).
"""

from __future__ import annotations

import errno
import os
import posixpath
import re
import stat
from dataclasses import dataclass
from typing import Final

from ._linux import _mountapi as M
from ._linux import constants as C

__all__ = [
    "Bind",
    "Dev",
    "Mount",
    "Proc",
    "ReadOnly",
    "Symlink",
    "Tmpfs",
]

NEWROOT: Final = b"/newroot"
OLDROOT: Final = b"/oldroot"
_BASE_CANDIDATES: Final = ("/tmp", "/mnt", "/run", "/var/tmp")


# --- validation helpers -----------------------------------------------------------


def check_path(value: object, field: str, *, absolute: bool = True, inside: bool = True) -> str:
    """Validate and normalise a path field; return it as ``str``.

    ``inside``: the path names a place in the sandbox's tree, so a ``..``
    component is refused (it could only mean "outside the root").
    """
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, bytes):
        value = os.fsdecode(value)
    if not isinstance(value, str):
        raise TypeError(f"{field} must be a path (str or os.PathLike), not {type(value).__name__}")
    if not value:
        raise ValueError(f"{field} must not be empty")
    if "\0" in value:
        raise ValueError(f"{field} {value!r} contains a NUL byte")
    if absolute and not value.startswith("/"):
        raise ValueError(f"{field} {value!r} is relative: sandbox paths must be absolute")
    if inside and ".." in value.split("/"):
        raise ValueError(f"{field} {value!r} has a '..' component: it would climb out of the root")
    norm = posixpath.normpath(value) if absolute else value
    if norm.startswith("//"):
        norm = "/" + norm.lstrip("/")
    return norm


_SIZE = re.compile(r"[0-9]{1,18}[kmgKMG%]?\Z")


def _check_mode(value: object, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{field} must be an int such as 0o755, not {type(value).__name__}")
    if not 0 <= value <= 0o7777:
        raise ValueError(f"{field} {value:#o} is not a file mode (0 to 0o7777)")
    return value


# --- the public mount kinds ------------------------------------------------------------


class Mount:
    """Base of the mount kinds; only the subclasses here are accepted."""

    __slots__ = ()

    @property
    def target(self) -> str:
        """The path inside the sandbox this entry creates or changes."""
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class Bind(Mount):
    """Bind ``src`` (a host path) at ``dst`` in the sandbox (default: the same path).

    The bind is recursive (mounts below ``src`` come along); ``readonly=True``
    makes all of it read-only (``mount_setattr``, Linux 5.12).

    >>> Bind("/usr", readonly=True)
    Bind(src='/usr', dst='/usr', readonly=True)
    """

    src: str
    dst: str | None = None
    readonly: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "src", check_path(self.src, "Bind.src", inside=False))
        dst = self.src if self.dst is None else self.dst
        object.__setattr__(self, "dst", check_path(dst, "Bind.dst"))
        if not isinstance(self.readonly, bool):
            raise TypeError(f"Bind.readonly must be a bool, not {type(self.readonly).__name__}")

    @property
    def target(self) -> str:
        assert self.dst is not None
        return self.dst


@dataclass(frozen=True, slots=True)
class Tmpfs(Mount):
    """A fresh tmpfs at ``dst``; ``size`` in bytes or as ``"64m"``, ``"10%"``.

    >>> Tmpfs("/tmp", size="64m")
    Tmpfs(dst='/tmp', size='64m', mode=493)
    """

    dst: str
    size: int | str | None = None
    mode: int = 0o755

    def __post_init__(self) -> None:
        object.__setattr__(self, "dst", check_path(self.dst, "Tmpfs.dst"))
        size = self.size
        if size is not None:
            if isinstance(size, bool) or not isinstance(size, (int, str)):
                raise TypeError(
                    f"Tmpfs.size must be bytes (int) or a str like '64m', not {type(size).__name__}"
                )
            if isinstance(size, int) and size < 1:
                raise ValueError(f"Tmpfs.size must be positive, not {size}")
            if isinstance(size, str) and not _SIZE.match(size):
                raise ValueError(f"Tmpfs.size {size!r}: expected digits with k, m, g or %")
        _check_mode(self.mode, "Tmpfs.mode")

    @property
    def target(self) -> str:
        return self.dst

    def options(self) -> bytes:
        opts = f"mode={self.mode:04o}"
        if self.size is not None:
            opts += f",size={self.size}"
        return opts.encode()


@dataclass(frozen=True, slots=True)
class Proc(Mount):
    """A fresh ``proc`` at ``dst``: it shows the sandbox's own pid namespace.

    Needs ``"pid"`` in the sandbox's namespaces (a proc of the host's pid
    namespace would show every host process).
    """

    dst: str = "/proc"

    def __post_init__(self) -> None:
        object.__setattr__(self, "dst", check_path(self.dst, "Proc.dst"))

    @property
    def target(self) -> str:
        return self.dst


DEV_NODES: Final = ("null", "zero", "full", "random", "urandom", "tty")


@dataclass(frozen=True, slots=True)
class Dev(Mount):
    """A minimal ``/dev`` on a tmpfs at ``dst``.

    ``null zero full random urandom tty`` are bind-mounted from the host;
    ``shm`` is a tmpfs (mode 1777); ``pts`` a new devpts instance with
    ``ptmx`` linked to ``pts/ptmx`` where the kernel permits it; and the
    ``fd``, ``stdin``, ``stdout``, ``stderr`` links into ``/proc/self/fd``.
    """

    dst: str = "/dev"

    def __post_init__(self) -> None:
        object.__setattr__(self, "dst", check_path(self.dst, "Dev.dst"))
        if self.dst == "/":
            raise ValueError("Dev.dst must not be '/'")

    @property
    def target(self) -> str:
        return self.dst


@dataclass(frozen=True, slots=True)
class Symlink(Mount):
    """A symbolic link at ``dst`` pointing to ``target`` (any text, as ``ln -s``).

    >>> Symlink("usr/bin", "/bin")
    Symlink(link_target='usr/bin', dst='/bin')
    """

    link_target: str
    dst: str

    def __post_init__(self) -> None:
        t = self.link_target
        if isinstance(t, os.PathLike):
            t = os.fspath(t)
        if not isinstance(t, str):
            raise TypeError(f"Symlink.link_target must be a str, not {type(t).__name__}")
        if not t or "\0" in t:
            raise ValueError(f"Symlink.link_target {t!r} must be non-empty without NUL bytes")
        object.__setattr__(self, "link_target", t)
        object.__setattr__(self, "dst", check_path(self.dst, "Symlink.dst"))
        if self.dst == "/":
            raise ValueError("Symlink.dst must not be '/'")

    @property
    def target(self) -> str:
        return self.dst


@dataclass(frozen=True, slots=True)
class ReadOnly(Mount):
    """Make ``path`` (the mount at it, not the ones below) read-only.

    Applied after every other mount, in order. ``path`` is first bound onto
    itself, so it need not be a mount point already.

    >>> ReadOnly("/")
    ReadOnly(path='/')
    """

    path: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", check_path(self.path, "ReadOnly.path"))

    @property
    def target(self) -> str:
        return self.path


MOUNT_KINDS: Final = (Bind, Tmpfs, Proc, Dev, Symlink, ReadOnly)


# --- child-side steps ---------------------------------------------------------------------
#
# Each step is frozen data; run() only makes syscalls. Errors carry the path
# as the caller named it (``where``), never the staging path.


def _staged(dst: str) -> bytes:
    return NEWROOT if dst == "/" else NEWROOT + os.fsencode(dst)


def _ensure_dir(path: bytes, where: str) -> None:
    try:
        os.makedirs(path, 0o755, exist_ok=True)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot create the mount point: {exc.strerror}", where) from None


def _ensure_file(path: bytes, where: str) -> None:
    try:
        os.makedirs(os.path.dirname(path), 0o755, exist_ok=True)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOCTTY, 0o444))
    except OSError as exc:
        raise OSError(exc.errno, f"cannot create the mount point: {exc.strerror}", where) from None


_RDONLY_ATTR: Final = M.mount_attr(attr_set=M.MOUNT_ATTR_RDONLY)


@dataclass(frozen=True, slots=True)
class MakePrivate:
    """``mount --make-rprivate /`` (or rslave): later mounts stay in the sandbox."""

    flags: int
    name: str = "mount propagation"

    def run(self) -> None:
        M.mount(None, b"/", None, self.flags, None, "/")


@dataclass(frozen=True, slots=True)
class NewRoot:
    """Mount the staging tmpfs at ``base`` and pivot into it (host tree at /oldroot)."""

    base: bytes
    where: str
    name: str = "new root"

    def run(self) -> None:
        base = self.base
        M.mount(b"tmpfs", base, b"tmpfs", C.MS_NOSUID | C.MS_NODEV, b"mode=0755", self.where)
        os.mkdir(base + NEWROOT, 0o755)
        os.mkdir(base + OLDROOT, 0o755)
        # pivot_root needs the new root to be a mount point.
        M.mount(base + NEWROOT, base + NEWROOT, None, C.MS_BIND | C.MS_REC, None, "/")
        M.pivot_root(base, base + OLDROOT, self.where)
        os.chdir(b"/")


@dataclass(frozen=True, slots=True)
class BindStep:
    src: bytes
    dst: bytes
    where: str
    is_dir: bool
    readonly: bool
    name: str

    def run(self) -> None:
        if self.dst != NEWROOT:
            if self.is_dir:
                _ensure_dir(self.dst, self.where)
            else:
                _ensure_file(self.dst, self.where)
        M.mount(self.src, self.dst, None, C.MS_BIND | C.MS_REC, None, self.where)
        if self.readonly:
            M.mount_setattr(self.dst, M.AT_RECURSIVE, _RDONLY_ATTR, self.where)


@dataclass(frozen=True, slots=True)
class FsStep:
    """A fresh filesystem (tmpfs, proc) at ``dst``."""

    fstype: bytes
    dst: bytes
    where: str
    flags: int
    data: bytes | None
    name: str

    def run(self) -> None:
        if self.dst != NEWROOT:
            _ensure_dir(self.dst, self.where)
        M.mount(self.fstype, self.dst, self.fstype, self.flags, self.data, self.where)


@dataclass(frozen=True, slots=True)
class DevStep:
    dst: bytes
    where: str
    name: str

    def run(self) -> None:
        dev = self.dst
        where = self.where
        _ensure_dir(dev, where)
        M.mount(b"tmpfs", dev, b"tmpfs", C.MS_NOSUID | C.MS_NOEXEC, b"mode=0755", where)
        for node in _DEV_NODES_B:
            path = dev + b"/" + node
            _ensure_file(path, where)
            M.mount(OLDROOT + b"/dev/" + node, path, None, C.MS_BIND, None, where)
        os.mkdir(dev + b"/shm", 0o1777)
        M.mount(b"tmpfs", dev + b"/shm", b"tmpfs", C.MS_NOSUID | C.MS_NODEV, b"mode=1777", where)
        os.mkdir(dev + b"/pts", 0o755)
        try:
            M.mount(
                b"devpts",
                dev + b"/pts",
                b"devpts",
                C.MS_NOSUID | C.MS_NOEXEC,
                b"newinstance,ptmxmode=0666,mode=0620",
                where,
            )
        except OSError:
            pass  # not permitted here: /dev without ptys, as documented
        else:
            os.symlink(b"pts/ptmx", dev + b"/ptmx")
        for link, target in _DEV_LINKS:
            os.symlink(target, dev + b"/" + link)


_DEV_NODES_B: Final = tuple(n.encode() for n in DEV_NODES)
_DEV_LINKS: Final = (
    (b"fd", b"/proc/self/fd"),
    (b"stdin", b"/proc/self/fd/0"),
    (b"stdout", b"/proc/self/fd/1"),
    (b"stderr", b"/proc/self/fd/2"),
)


@dataclass(frozen=True, slots=True)
class SymlinkStep:
    link_target: bytes
    dst: bytes
    where: str
    name: str

    def run(self) -> None:
        _ensure_dir(os.path.dirname(self.dst), self.where)
        try:
            os.symlink(self.link_target, self.dst)
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, self.where) from None


@dataclass(frozen=True, slots=True)
class ReadOnlyStep:
    dst: bytes
    where: str
    name: str

    def run(self) -> None:
        M.mount(self.dst, self.dst, None, C.MS_BIND | C.MS_REC, None, self.where)
        M.mount_setattr(self.dst, 0, _RDONLY_ATTR, self.where)


@dataclass(frozen=True, slots=True)
class FinishRoot:
    """Detach the host tree, then make /newroot the root and drop the staging root."""

    name: str = "pivot_root"

    def run(self) -> None:
        M.umount2(OLDROOT, C.MNT_DETACH, "/oldroot")
        os.chdir(NEWROOT)
        M.pivot_root(b".", b".", "/")
        M.umount2(b".", C.MNT_DETACH, "/")
        os.chdir(b"/")


# --- compiling -------------------------------------------------------------------------------


def staging_base() -> str:
    """Where the staging tmpfs goes: an existing directory of this mount namespace."""
    for cand in _BASE_CANDIDATES:
        if os.path.isdir(cand) and not os.path.islink(cand):
            return cand
    raise FileNotFoundError(
        errno.ENOENT,
        f"none of {', '.join(_BASE_CANDIDATES)} is a directory: nowhere to stage the new root",
    )


def _source(src: str) -> tuple[bytes, bool]:
    """Resolve a bind source in the parent: ``(/oldroot + realpath, is_dir)``."""
    real = os.path.realpath(src)
    try:
        st = os.stat(real)
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, "Bind.src does not exist", src) from None
    return OLDROOT + os.fsencode(real), stat.S_ISDIR(st.st_mode)


def mount_steps(mounts: tuple[Mount, ...]) -> tuple[object, ...]:
    """The steps for ``mounts`` (after :class:`NewRoot`, before :class:`FinishRoot`).

    Bind sources are resolved now (symlinks included, in the caller's view)
    and must exist. ``ReadOnly`` entries go last, in their given order.
    """
    steps: list[object] = []
    for m in mounts:
        if isinstance(m, Bind):
            assert m.dst is not None
            src, is_dir = _source(m.src)
            ro = " (read-only)" if m.readonly else ""
            steps.append(
                BindStep(
                    src, _staged(m.dst), m.dst, is_dir, m.readonly, f"bind {m.src} {m.dst}{ro}"
                )
            )
        elif isinstance(m, Tmpfs):
            steps.append(
                FsStep(
                    b"tmpfs",
                    _staged(m.dst),
                    m.dst,
                    C.MS_NOSUID | C.MS_NODEV,
                    m.options(),
                    f"tmpfs {m.dst}",
                )
            )
        elif isinstance(m, Proc):
            steps.append(
                FsStep(
                    b"proc",
                    _staged(m.dst),
                    m.dst,
                    C.MS_NOSUID | C.MS_NODEV | C.MS_NOEXEC,
                    None,
                    f"mount proc {m.dst}",
                )
            )
        elif isinstance(m, Dev):
            steps.append(DevStep(_staged(m.dst), m.dst, f"dev {m.dst}"))
        elif isinstance(m, Symlink):
            steps.append(
                SymlinkStep(
                    os.fsencode(m.link_target),
                    _staged(m.dst),
                    m.dst,
                    f"symlink {m.dst} -> {m.link_target}",
                )
            )
    for m in mounts:
        if isinstance(m, ReadOnly):
            steps.append(ReadOnlyStep(_staged(m.path), m.path, f"read-only {m.path}"))
    return tuple(steps)
