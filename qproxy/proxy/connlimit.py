"""Connection limits for the job's port: what nginx's limit_conn, client_header_timeout and
keepalive_timeout/keepalive_requests do, for a port every local user can reach.

aiohttp has none of them (its idle keep-alive default is 3630 s, and a request whose headers
arrive a byte at a time is never timed out), so ``ConnGuard`` wraps aiohttp's protocol
factory (``runner.server``): every accepted connection is asked whose it is (``peer``); the
job's uid and root share ``max_connections``, every other uid together gets at most
``max_connections_others`` of them (so a neighbour holding idle sockets can never starve the
job); over-limit connections get a 503 and are closed before aiohttp sees them. From a
connection's first byte (or its opening) to its complete headers it has
``client_header_timeout_seconds``; idle between requests, ``keepalive_timeout_seconds``; after
``keepalive_requests`` requests the response closes it. The request phase itself is timed by
the routes (body reads, ``client_body_timeout_seconds``).

The middleware ``conn_mw`` (app.py) tells the guard when a request's headers are complete
(``started``) and when its handler is done (``finished``).

A multi-node primary's relay listener (relay/listen.py) is reached from other nodes, where the
peer's uid is unknown: there a connection from a privileged source port is a node's root
(relays bind one, see ports.reserved_source_socket); any other counts as a neighbour's until a
request on it proves it is the job's relay (``promote``), and one that fails is closed.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any, cast

from qproxy.config import ProxySettings
from qproxy.node.peer import peer_uid
from qproxy.node.ports import RESERVED_SOURCE

_BODY = (b'{"errors":[{"code":503,"message":"too many connections to this QPU proxy",'
         b'"more_info":""}],"status_code":503}')
REFUSAL = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
           b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(_BODY), _BODY))


class ConnGuard:
    def __init__(self, factory: Callable[[], asyncio.Protocol], settings: ProxySettings,
                 job_uid: int | None, *, by_uid: bool = True) -> None:
        self.factory = factory
        self.settings = settings
        self.by_uid = by_uid
        self.trusted = {0, os.geteuid()} | ({job_uid} if job_uid is not None else set())
        self.conns: dict[Any, _Conn] = {}
        self.others = 0
        self.stats = {"accepted": 0, "refused": 0, "header_timeouts": 0, "idle_closed": 0}

    def __call__(self) -> asyncio.Protocol:
        return _Conn(self)

    def of(self, transport: Any) -> _Conn | None:
        return self.conns.get(transport)


class _Conn(asyncio.Protocol):
    """Forwards everything to aiohttp's RequestHandler, adding the limits above."""

    def __init__(self, guard: ConnGuard) -> None:
        self.guard = guard
        self.inner: asyncio.Protocol | None = None
        self.transport: asyncio.Transport | None = None
        self.other = False
        self.uid: int | None = None  # the peer's (by_uid only): keys its unauthenticated bucket
        self.requests = 0
        self.busy = False
        self.idle = False  # between requests: the keep-alive timer runs until a byte arrives
        self._timer: asyncio.TimerHandle | None = None

    # -- limits
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport; not necessarily asyncio's class (uvloop's is not a subclass)
        self.transport = cast(asyncio.Transport, transport)
        g, s = self.guard, self.guard.settings
        sock = transport.get_extra_info("socket")
        if g.by_uid:
            self.uid = peer_uid(sock) if sock is not None else None
            self.other = self.uid not in g.trusted
        else:
            peer = transport.get_extra_info("peername")
            self.other = not (isinstance(peer, tuple) and peer[1] <= RESERVED_SOURCE[1])
        if len(g.conns) >= s.max_connections or (
                self.other and g.others >= s.max_connections_others):
            g.stats["refused"] += 1
            self.transport.write(REFUSAL)
            self.transport.close()
            return
        g.stats["accepted"] += 1
        g.conns[transport] = self
        g.others += self.other
        self.inner = g.factory()
        self.inner.connection_made(transport)
        self._arm(s.client_header_timeout_seconds, "header_timeouts")

    def _arm(self, seconds: float, why: str) -> None:
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(seconds, self._expire, why)

    def _expire(self, why: str) -> None:
        self._timer = None
        if self.transport is not None and not self.busy:
            self.guard.stats[why] += 1
            self.transport.abort()

    def promote(self) -> None:
        """A request on this connection proved it is the job's own (the relay header)."""
        if self.other and self.guard.conns.get(self.transport) is self:
            self.other = False
            self.guard.others -= 1

    def started(self) -> bool:
        """A request's headers are complete; False: this is its connection's last request."""
        self.busy, self.idle = True, False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.requests += 1
        return self.requests < self.guard.settings.keepalive_requests

    def finished(self) -> None:
        self.busy, self.idle = False, True
        if self.transport is not None and not self.transport.is_closing():
            self._arm(self.guard.settings.keepalive_timeout_seconds, "idle_closed")

    # -- forwarding
    def data_received(self, data: bytes) -> None:
        if self.inner is None:
            return
        if self.idle:  # the next request begins: its headers get the header timeout
            self.idle = False
            self._arm(self.guard.settings.client_header_timeout_seconds, "header_timeouts")
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.inner is not None else None

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.inner is None:
            return
        g = self.guard
        if g.conns.pop(self.transport, None) is not None:
            g.others -= self.other
        self.inner.connection_lost(exc)
