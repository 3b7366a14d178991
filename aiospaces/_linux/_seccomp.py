"""seccomp through the system libseccomp (``pyseccomp``): compile in the parent, load in the child.

libseccomp builds the BPF program (no hand-written BPF); :func:`compile_filter`
exports it as bytes in the parent, and :class:`Program` loads those bytes in
the child with one ``prctl(PR_SET_SECCOMP)``: the child does no libseccomp
work and allocates nothing.

Rules are ``(syscall name, action, conditions)``: ``action`` is ``"allow"``,
``"kill"`` or an errno number; a condition is ``(arg index, op, value[,
mask])`` with ``op`` in ``"==" "!=" "&=="`` (masked equality: ``arg & mask ==
value``).
"""

from __future__ import annotations

import ctypes
import functools
import os
from collections.abc import Sequence
from typing import Any, Final

from ._syscalls import _check, _prctl

PR_SET_SECCOMP: Final = 22
SECCOMP_MODE_FILTER: Final = 2

Condition = tuple[int, str, int, int]
Rule = tuple[str, str | int, tuple[Condition, ...]]


@functools.cache
def _pyseccomp() -> Any:
    try:
        import pyseccomp  # type: ignore[import-untyped]  # noqa: PLC0415 - optional extra
    except ImportError as exc:
        raise ImportError(
            "seccomp needs pyseccomp over the system libseccomp: "
            "pip install 'aiospaces[seccomp]' (and the libseccomp2 package)"
        ) from exc
    except OSError as exc:  # pragma: no cover - pyseccomp found no libseccomp.so.2
        raise ImportError(
            f"pyseccomp could not load libseccomp ({exc}): install libseccomp2"
        ) from exc
    return pyseccomp


def available() -> bool:
    """True when pyseccomp and libseccomp can be loaded."""
    try:
        _pyseccomp()
    except ImportError:
        return False
    return True


def syscall_known(name: str) -> bool:
    """Whether libseccomp knows ``name`` for this machine's architecture."""
    s = _pyseccomp()
    try:
        return int(s.resolve_syscall(s.system_arch(), name)) >= 0
    except Exception:
        return False


class _SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    ]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class Program:
    """A compiled BPF program, loaded in the child by :meth:`load`."""

    __slots__ = ("_buf", "_prog", "size")

    def __init__(self, bpf: bytes) -> None:
        if not bpf or len(bpf) % ctypes.sizeof(_SockFilter):
            raise ValueError(f"seccomp: a BPF program of {len(bpf)} bytes is malformed")
        self.size = len(bpf) // ctypes.sizeof(_SockFilter)
        self._buf = ctypes.create_string_buffer(bpf, len(bpf))
        self._prog = _SockFprog(self.size, ctypes.addressof(self._buf))

    def load(self) -> None:
        """Install the filter on the calling thread (needs no_new_privs or CAP_SYS_ADMIN)."""
        _check(_prctl, PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(self._prog), 0, 0)


def compile_filter(rules: Sequence[Rule]) -> Program:
    """Build a default-allow filter with ``rules`` through libseccomp.

    Other architectures' syscalls (i386 ``int 0x80`` on x86-64, x32) are
    killed: libseccomp's default for a foreign architecture.
    """
    s = _pyseccomp()
    ops = {"==": s.EQ, "!=": s.NE, "&==": s.MASKED_EQ}
    flt = s.SyscallFilter(s.ALLOW)
    for name, action, conds in rules:
        if action == "allow":
            act = s.ALLOW
        elif action == "kill":
            act = s.KILL_PROCESS
        else:
            assert isinstance(action, int)
            act = s.ERRNO(action)
        args = []
        for index, op, value, mask in conds:
            if op == "&==":
                args.append(s.Arg(index, ops[op], mask, value))
            else:
                args.append(s.Arg(index, ops[op], value))
        try:
            flt.add_rule(act, name, *args)
        except Exception as exc:
            raise ValueError(f"seccomp: libseccomp refused the rule for {name!r}: {exc}") from exc
    r, w = os.pipe()
    try:
        with os.fdopen(w, "wb", closefd=True) as out:
            flt.export_bpf(out)
        chunks = []
        while chunk := os.read(r, 1 << 16):
            chunks.append(chunk)
    finally:
        os.close(r)
    return Program(b"".join(chunks))
