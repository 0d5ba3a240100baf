"""The upstream connection the vendor key travels over: who is at the other end.

Over https the server proves itself with its certificate (``verify_tls``, on by default).
Plain http is allowed only to a loopback address (config.py refuses anything else) — and a
loopback port is no proof at all: any local user can bind the emulator's port while it is
down, or before it starts, and the proxy would hand it the centre's key in the IAM exchange.
So every new plain-http connection is checked once it is established and before a byte is
sent: the socket that accepted it must belong to root (or to the proxy's own uid, which can
read the key from the proxy's memory anyway). Checking the connection itself, not the port
beforehand, leaves no window in which a listener could change hands.

Why not the alternatives: a privileged port (< 1024) proves only that someone with
CAP_NET_BIND_SERVICE bound it, needs the emulator to run as root or with that capability, and
collides with real services; a Unix socket would need every tool, the cluster script and
the client side changed. The owner check keeps the configuration as it is and is exact.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import aiohttp

from qproxy.node.peer import peer_uid


class UntrustedListener(aiohttp.ClientConnectionError):
    """The plain-http upstream's listening socket is not root's."""


def trusted_uids() -> frozenset[int]:
    return frozenset({0, os.geteuid()})


def is_local_address(host: str) -> bool:
    """Whether ``host`` is an address of this network namespace (a socket can bind it).
    A loopback-range address that is not (e.g. the controller's 127.77.0.1 seen from a node
    of the local several-node cluster) is reached through a route, and such routes
    (route_localnet) only root sets up: no local user can have bound that listener here."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, 0))
        except OSError:
            return False
    return True


def listener_problem(sock: socket.socket | None, host: str | None, port: int | None) -> str | None:
    """Why no credential may go over this established plain-http connection (None: it may).
    Used by the proxy's connector and by ``qproxy emulator device`` (the emulator's key)."""
    owner = peer_uid(sock) if sock is not None else None
    if owner is None and host and not is_local_address(host):
        return None  # not a listener on this node: see is_local_address
    if owner in trusted_uids():
        return None
    who = "nobody known" if owner is None else f"uid {owner}"
    return (f"refusing to send credentials to {host}:{port}: its listener belongs to {who}, "
            "not root (plain http is trusted only from root's sockets)")


def credential_session(verify_tls: bool, limit: int, sock_read: float,
                       **kwargs: Any) -> aiohttp.ClientSession:
    """The session every request carrying a credential goes through (the vendor API's, the
    S3 store's): plain http only to root's listeners, no proxy from the environment, no
    cookies kept."""
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=15, sock_read=sock_read),
        connector=OwnerCheckedConnector(ssl=True if verify_tls else False, limit=limit),
        trust_env=False, cookie_jar=aiohttp.DummyCookieJar(), **kwargs)


class OwnerCheckedConnector(aiohttp.TCPConnector):
    """A TCPConnector that refuses plain-http connections to a listener root does not own."""

    async def _create_connection(self, req: Any, traces: Any, timeout: Any) -> Any:
        proto = await super()._create_connection(req, traces, timeout)
        if req.url.scheme == "https":
            return proto
        transport = proto.transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        problem = listener_problem(sock, req.url.host, req.url.port)
        if problem is not None:
            if transport is not None:
                transport.abort()
            raise UntrustedListener(problem)
        return proto
