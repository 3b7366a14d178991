"""Network modes of a :class:`~aiospaces.Sandbox`: none, loopback, host, :class:`Veth`.

``"none"`` gives a new network namespace whose loopback stays down,
``"loopback"`` brings ``lo`` up in it (a child-side ioctl), ``"host"``
shares the caller's network. :class:`Veth` (root only) adds a veth pair:

* parent side, during the handshake, with pyroute2 (extra ``net``): create
  the pair with the host end in the caller's namespace and the peer made
  directly inside the child's namespace (``IFLA_NET_NS_PID``: no window in
  which the peer is visible on the host, no name clash with the host's
  ``eth0``), give the host end its address, bring it up;
* child side, before the uid switch: the peer's address, netmask, up, and
  optionally a default route through the host end — plain ``SIOCSIF*``
  ioctls on an ``AF_INET`` socket, prepared as packed structs here.

Cleanup: a veth pair dies with either end. When the sandbox's network
namespace goes away (its last process exits), the kernel deletes the peer
and with it the host end — also when the parent crashed. The deletion is
asynchronous (the kernel's netns cleanup work): the host link can outlive
the child by some milliseconds. If the handshake fails after the pair was
made, the parent deletes the host end itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import importlib
import ipaddress
import itertools
import os
import re
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

from ._errors import SpawnError
from ._linux import _mountapi as M

__all__ = ["NetworkMode", "Veth"]

_IFNAME = re.compile(r"[A-Za-z0-9_.\-]{1,15}\Z")
_counter = itertools.count()


def check_ifname(value: object, field: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{field} must be a str, not {type(value).__name__}")
    if not _IFNAME.match(value) or value in (".", ".."):
        raise ValueError(
            f"{field} {value!r}: an interface name is 1 to 15 characters of A-Z a-z 0-9 _ . -"
        )
    return value


def _ipv4_interface(value: object, field: str) -> ipaddress.IPv4Interface:
    if isinstance(value, ipaddress.IPv4Interface):
        return value
    if not isinstance(value, str):
        raise TypeError(f"{field} must be a str like '10.200.0.2/24', not {type(value).__name__}")
    try:
        iface = ipaddress.ip_interface(value)
    except ValueError as exc:
        raise ValueError(f"{field}: {exc}") from None
    if not isinstance(iface, ipaddress.IPv4Interface):
        raise ValueError(f"{field} {value!r}: only IPv4 addresses are supported")
    if "/" not in value:
        raise ValueError(f"{field} {value!r} needs a prefix length, e.g. '10.200.0.2/24'")
    return iface


@dataclass(frozen=True, slots=True)
class Veth:
    """A veth pair between the host and the sandbox (root only; extra ``net``).

    ``address`` is the sandbox end's (``ifname``, default ``eth0``),
    ``host_address`` the host end's (``host_ifname``, default a unique
    ``asp…`` name); both IPv4 with a prefix, in the same subnet.
    ``default_route=True`` routes everything through the host end.

    >>> Veth("10.200.0.2/24", "10.200.0.1/24")  # doctest: +ELLIPSIS
    Veth(address='10.200.0.2/24', host_address='10.200.0.1/24', ifname='eth0', ...)
    """

    address: str
    host_address: str
    ifname: str = "eth0"
    host_ifname: str | None = None
    default_route: bool = False

    def __post_init__(self) -> None:
        inside = _ipv4_interface(self.address, "Veth.address")
        host = _ipv4_interface(self.host_address, "Veth.host_address")
        if inside.network != host.network:
            raise ValueError(
                f"Veth.address {self.address} and Veth.host_address {self.host_address} "
                "are not in the same subnet"
            )
        if inside.ip == host.ip:
            raise ValueError(f"Veth.address and Veth.host_address are both {inside.ip}")
        check_ifname(self.ifname, "Veth.ifname")
        if self.host_ifname is not None:
            check_ifname(self.host_ifname, "Veth.host_ifname")
        if not isinstance(self.default_route, bool):
            raise TypeError(
                f"Veth.default_route must be a bool, not {type(self.default_route).__name__}"
            )
        object.__setattr__(self, "address", str(inside))
        object.__setattr__(self, "host_address", str(host))


NetworkMode: TypeAlias = Literal["none", "loopback", "host"] | Veth
"""What ``Sandbox(network=...)`` accepts."""


# --- child-side steps ----------------------------------------------------------------------


def _up(sock: socket.socket, ifreq: bytes) -> None:
    # Read-modify-write: SIOCSIFFLAGS replaces the flags word.
    cur = fcntl.ioctl(sock, M.SIOCGIFFLAGS, ifreq)
    flags = struct.unpack_from("h", cur, M.IFNAMSIZ)[0] | M.IFF_UP | M.IFF_RUNNING
    fcntl.ioctl(sock, M.SIOCSIFFLAGS, cur[: M.IFNAMSIZ] + struct.pack("h", flags) + cur[18:])


@dataclass(frozen=True, slots=True)
class LinkUp:
    """Bring one interface up (``lo`` for ``network="loopback"``)."""

    ifreq: bytes
    name: str

    def run(self) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            _up(s, self.ifreq)


@dataclass(frozen=True, slots=True)
class VethInside:
    """Address, netmask, up and optional default route of the sandbox's veth end."""

    ifreq_flags: bytes
    ifreq_addr: bytes
    ifreq_mask: bytes
    route: bytes | None
    name: str

    def run(self) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            fcntl.ioctl(s, M.SIOCSIFADDR, self.ifreq_addr)
            fcntl.ioctl(s, M.SIOCSIFNETMASK, self.ifreq_mask)
            _up(s, self.ifreq_flags)
            if self.route is not None:
                fcntl.ioctl(s, M.SIOCADDRT, self.route)


def loopback_step() -> LinkUp:
    return LinkUp(M.ifreq_flags("lo", 0), "loopback up")


def veth_inside_step(v: Veth) -> VethInside:
    iface = ipaddress.IPv4Interface(v.address)
    gw = ipaddress.IPv4Interface(v.host_address).ip
    return VethInside(
        M.ifreq_flags(v.ifname, 0),
        M.ifreq_addr(v.ifname, iface.ip.packed),
        M.ifreq_addr(v.ifname, iface.netmask.packed),
        M.rtentry_default_via(gw.packed) if v.default_route else None,
        f"veth {v.ifname} {v.address}",
    )


# --- the parent side ---------------------------------------------------------------------------


def have_pyroute2() -> bool:
    try:
        importlib.import_module("pyroute2")
    except ImportError:
        return False
    return True


def unique_host_ifname() -> str:
    """``asp`` + pid + a counter, in hex: unique on this host at this moment."""
    return f"asp{os.getpid():x}x{next(_counter):x}"[:15]


@dataclass(frozen=True, slots=True)
class VethPlumbing:
    """Parent-side step: ``await step(pid)`` creates and configures the pair.

    pyroute2's asyncio core opens its netlink socket with
    ``create_datagram_endpoint``, which uvloop refuses for ``AF_NETLINK``;
    so the synchronous ``IPRoute`` (which runs a private event loop) does
    the work in a short-lived thread of its own, awaited through a future.
    A few local netlink round trips: the thread lives for about a millisecond.
    If the spawn is cancelled meanwhile, the child is killed and the pair
    goes with its namespace.
    """

    veth: Veth
    host_ifname: str

    async def __call__(self, pid: int) -> None:
        await _in_thread(lambda: self._plumb(pid), f"aiospaces-veth-{self.host_ifname}")

    def _plumb(self, pid: int) -> None:
        # The optional extra, untyped: imported by name so mypy needs no stubs.
        pyroute2: Any = importlib.import_module("pyroute2")
        netlink_error: Any = importlib.import_module("pyroute2.netlink.exceptions").NetlinkError
        host = ipaddress.IPv4Interface(self.veth.host_address)
        step = f"veth {self.host_ifname}"
        created = False
        with pyroute2.IPRoute() as ipr:
            try:
                try:
                    ipr.link(
                        "add",
                        ifname=self.host_ifname,
                        kind="veth",
                        peer={"ifname": self.veth.ifname, "net_ns_pid": pid},
                    )
                    created = True
                    found = ipr.link_lookup(ifname=self.host_ifname)
                    if not found:
                        raise SpawnError(
                            errno.ENODEV, "the new veth vanished", self.host_ifname, step=step
                        )
                    index = found[0]
                    ipr.addr(
                        "add", index=index, address=str(host.ip), prefixlen=host.network.prefixlen
                    )
                    ipr.link("set", index=index, state="up")
                except netlink_error as exc:
                    code = int(exc.code) if exc.code else errno.EIO
                    raise SpawnError(code, os.strerror(code), self.host_ifname, step=step) from exc
            except BaseException:
                if created:
                    # The pair may be gone with the child's namespace already.
                    with contextlib.suppress(Exception):
                        ipr.link("del", ifname=self.host_ifname)
                raise


async def _in_thread(fn: Callable[[], None], name: str) -> None:
    """Run ``fn`` in a new thread; await it without blocking the loop."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def settle(exc: BaseException | None) -> None:
        if done.done():
            return
        if exc is None:
            done.set_result(None)
        else:
            done.set_exception(exc)

    def worker() -> None:
        try:
            fn()
        except BaseException as exc:
            err: BaseException | None = exc
        else:
            err = None
        with contextlib.suppress(RuntimeError):  # the loop was closed meanwhile
            loop.call_soon_threadsafe(settle, err)

    thread = threading.Thread(target=worker, name=name, daemon=True)
    thread.start()
    await done
    thread.join()  # it has nothing left to do but return
