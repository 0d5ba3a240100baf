"""Which ports a proxy listens on: privileged ones (standard library only).

Only root can bind a port below ``net.ipv4.ip_unprivileged_port_start`` (1024 unless an admin
lowered it; the setting is per network namespace). A job's proxy and a multi-node primary's
relay listener both take the first free port of a privileged range, so that when a proxy
dies its port cannot be taken by another user who would then answer the job's requests
(or read its token): the job's endpoint is an address no user can ever listen on. That is
checked at start, and ``qproxy doctor`` reports a node where it does not hold.

Ports named in the services database (/etc/services: ``https``, ``ldap``, ``rsync``...) are
skipped: a proxy holding 127.0.0.1:443 would make a service started later on that port
fail. Debian's database names 86 TCP ports below 1024; 100-599 leaves 450 for proxies.
"""

from __future__ import annotations

import errno
import socket
from pathlib import Path


def unprivileged_port_start() -> int:
    """Linux's lowest port any user may bind in this network namespace."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    except (OSError, ValueError):
        return 1024


def privileged(high: int) -> str | None:
    """None if no user can bind a port up to ``high``; else why not (one line)."""
    start = unprivileged_port_start()
    if start <= high:
        return (f"net.ipv4.ip_unprivileged_port_start is {start}: any user could bind the "
                f"proxy ports up to {high}; raise it to 1024 (sysctl) or lower the ports")
    return None


def bind_privileged(host: str, ports: tuple[int, int], setting: str,
                    what: str = "proxy") -> socket.socket:
    """``bind_first_free`` on ``ports`` once they are known to be privileged here; else
    ConfigError naming ``setting`` (a proxy must not serve where any user could take over
    its port)."""
    from qproxy.config import ConfigError

    problem = privileged(ports[1])
    if problem:
        raise ConfigError(f"{setting}: {problem}")
    return bind_first_free(host, *ports, what=what)


def _named(port: int) -> bool:
    try:
        socket.getservbyport(port, "tcp")
    except OSError:
        return False
    return True


def bind_first_free(host: str, low: int, high: int, what: str = "proxy") -> socket.socket:
    """A listening, non-blocking socket on the first free, unnamed port of [low, high];
    OSError if there is none (or we are not root)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    last: OSError | None = None
    for port in range(low, high + 1):
        if _named(port):
            continue
        try:
            sock = socket.create_server((host, port), family=family, backlog=128)
        except OSError as exc:
            if exc.errno == errno.EACCES:  # not root: no port of the range will do
                raise OSError(exc.errno, f"cannot bind {what} port {port} on {host} "
                              "(privileged ports need root)") from None
            last = exc
            continue
        sock.setblocking(False)
        return sock
    raise OSError(getattr(last, "errno", errno.EADDRINUSE),
                  f"no free {what} port in {low}-{high} on {host}: {last}")


# Source ports of a relay's connections to its primary (as rresvport(3) picks them): from
# the top of the privileged range down. Only root can bind one, so the primary can tell a
# node's root (a relay) from a user on that node without asking anything (connlimit).
RESERVED_SOURCE = (512, 1023)


def reserved_source_socket(family: int) -> socket.socket:
    """A TCP socket bound to a free privileged source port (OSError if none, or not root)."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    any_addr = "::" if family == socket.AF_INET6 else "0.0.0.0"
    for port in range(RESERVED_SOURCE[1], RESERVED_SOURCE[0] - 1, -1):
        try:
            sock.bind((any_addr, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                continue
            sock.close()
            raise
        return sock
    sock.close()
    raise OSError(errno.EADDRINUSE, "no free reserved source port")
