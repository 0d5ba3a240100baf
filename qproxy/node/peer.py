"""Who owns the other end of a loopback TCP connection: the uid of a local socket.

Two uses, both about local users we do not trust (docs/security.md): the proxy tells the job's
own connections from a neighbour's (``connlimit``), and before the vendor key goes over plain
HTTP to a loopback upstream it checks that the socket that accepted the connection belongs to
root, not to a user who bound the emulator's port first (``upstream/guard``). Checking the
established connection itself, not the port beforehand, leaves no window between check and use.

The kernel answers an exact 4-tuple lookup over NETLINK_SOCK_DIAG (~20 us, constant: it does
not grow with the neighbour's sockets, which a /proc/net/tcp scan does); /proc/net/tcp{,6} is
the fallback where sock_diag is unavailable. Standard library only.
"""

from __future__ import annotations

import socket
import struct

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 1
NLMSG_ERROR = 2
_NOCOOKIE = 0xFFFFFFFF
_ALL_STATES = 0xFFFFFFFF
_NLMSGHDR = struct.Struct("=IHHII")
# inet_diag_msg: family, state, timer, retrans, sockid (48 bytes), expires, rqueue, wqueue, uid
_UID_OFFSET = _NLMSGHDR.size + 4 + 48 + 12

Addr = tuple[str, int]


def _packed(family: int, host: str) -> bytes:
    return socket.inet_pton(family, host).ljust(16, b"\0")


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _netlink_uid(local: Addr, remote: Addr) -> int | None:
    family = _family(local[0])
    sockid = struct.pack("!HH", local[1], remote[1]) + _packed(family, local[0]) + \
        _packed(family, remote[0]) + struct.pack("=III", 0, _NOCOOKIE, _NOCOOKIE)
    req = struct.pack("=BBBxI", family, socket.IPPROTO_TCP, 0, _ALL_STATES) + sockid
    msg = _NLMSGHDR.pack(_NLMSGHDR.size + len(req), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, 1, 0)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as nl:
        nl.settimeout(1.0)
        nl.sendto(msg + req, (0, 0))
        data = nl.recv(8192)
    _, kind, _, _, _ = _NLMSGHDR.unpack_from(data)
    if kind != SOCK_DIAG_BY_FAMILY or len(data) < _UID_OFFSET + 4:
        return None  # NLMSG_ERROR: no such socket (it is already gone)
    return int(struct.unpack_from("=I", data, _UID_OFFSET)[0])


def _proc_hex(family: int, host: str, port: int) -> str:
    raw = socket.inet_pton(family, host)
    # /proc/net/tcp prints each 32-bit word of the address in host (little-endian) order
    words = "".join(f"{struct.unpack('=I', raw[i:i + 4])[0]:08X}" for i in range(0, len(raw), 4))
    return f"{words}:{port:04X}"


def _proc_uid(local: Addr, remote: Addr) -> int | None:
    family = _family(local[0])
    want = (_proc_hex(family, *local), _proc_hex(family, *remote))
    path = "/proc/net/tcp6" if family == socket.AF_INET6 else "/proc/net/tcp"
    with open(path) as fh:
        next(fh, None)
        for line in fh:
            cols = line.split()
            if len(cols) > 7 and (cols[1], cols[2]) == want:
                return int(cols[7])
    return None


def socket_uid(local: Addr, remote: Addr) -> int | None:
    """The uid owning the TCP socket bound to ``local`` and connected to ``remote`` on this
    host (None if there is none, e.g. it just closed)."""
    local, remote = (local[0], int(local[1])), (remote[0], int(remote[1]))
    try:
        return _netlink_uid(local, remote)
    except OSError:
        pass
    try:
        return _proc_uid(local, remote)
    except OSError:
        return None


def peer_uid(sock: socket.socket) -> int | None:
    """The uid of the process at the other end of a loopback connection (None otherwise)."""
    try:
        here, there = sock.getsockname()[:2], sock.getpeername()[:2]
    except OSError:
        return None
    if not _is_loopback(there[0]):
        return None
    return socket_uid(there, here)


def _is_loopback(host: str) -> bool:
    return host.startswith("127.") or host in ("::1", "::ffff:127.0.0.1") or \
        host.startswith("::ffff:127.")
