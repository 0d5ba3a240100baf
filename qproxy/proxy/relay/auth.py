"""Multi-node jobs, the trust part (standard library only): the cluster key, the relay header,
and the primary proxy's relay listener socket.

A job spanning several nodes has ONE primary proxy (its first node: vendor key, lane gate,
every policy, the audit log) and a relay proxy on each other node (``qproxy.proxy.relay``)
that forwards its tasks' Runtime API requests to the primary. The primary accepts relayed
requests on a second listener, on the node's cluster address and a privileged port (only
root can bind below 1024, so no user can pose as a primary on any node), and only with

    X-QProxy-Relay: hex(HMAC-SHA256(cluster_key, "qproxy-relay:" + job_id))

The cluster key is a root-only file, the same on every node (like munge.key); a job never
sees it or the header value, so a job's tasks cannot talk to the relay listener themselves
and one job's relay cannot speak for another job. The job token is worthless there and the
relay header is refused on the job-facing listener (``qproxy.proxy.app``).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path

from qproxy.config import Config, ConfigError, port_range
from qproxy.node.ports import bind_privileged
from qproxy.secrets import SecretsError, check_private

RELAY_HEADER = "X-QProxy-Relay"
NODE_HEADER = "X-QProxy-Node"
# The extra env-file line through which the primary tells the prolog its relay port
# (task-env copies only the client variables, so a task never sees it).
RELAY_PORT_ENV = "QPROXY_RELAY_PORT"
MIN_KEY_BYTES = 16
_NODE = re.compile(r"[A-Za-z0-9._-]{1,64}")


def load_cluster_key(path: Path) -> bytes:
    """The key's bytes; SecretsError if missing, too short, not ours or readable by others."""
    check_private(path, "cluster key file")
    try:
        st = path.stat()
        key = path.read_bytes()
    except OSError as exc:
        raise SecretsError(f"cannot read cluster key file {path}: {exc.strerror}") from None
    if st.st_uid != os.geteuid():
        raise SecretsError(f"refusing to use cluster key file {path}: owned by uid "
                           f"{st.st_uid}, not {os.geteuid()}")
    if len(key.strip()) < MIN_KEY_BYTES:
        raise SecretsError(f"cluster key file {path} holds fewer than {MIN_KEY_BYTES} bytes")
    return key


def relay_token(key: bytes, job_id: str) -> str:
    """The relay header's value for one Slurm job."""
    return hmac.new(key, f"qproxy-relay:{job_id}".encode(), hashlib.sha256).hexdigest()


def check_relay_token(key: bytes, job_id: str, presented: str | None) -> bool:
    if not presented:
        return False
    return hmac.compare_digest(presented.strip().lower().encode(),
                               relay_token(key, job_id).encode())


def node_label(value: str | None) -> str:
    """A relaying node's name as the audit log records it (anything odd becomes "?")."""
    return value if value and _NODE.fullmatch(value) else "?"


def format_hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_hostport(text: str) -> tuple[str, int] | None:
    """``ADDR:PORT`` or ``[V6ADDR]:PORT`` -> (addr, port); None if malformed."""
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([^\s:\[\]]+):(\d{1,5})", text.strip())
    if not m:
        return None
    host = m.group(1) or m.group(3)
    port = int(m.group(2) or m.group(4))
    return (host, port) if 0 < port < 65536 else None


@dataclass
class RelayListener:
    """The primary's second listener: its socket and the key that checks relayed requests."""

    sock: socket.socket
    key: bytes
    job_id: str

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def env(self) -> dict[str, str]:
        return {RELAY_PORT_ENV: str(self.port)}


def add_args(p: argparse.ArgumentParser) -> None:
    """``qproxy serve`` options of a primary proxy."""
    p.add_argument("--relay-listen", metavar="ADDR",
                   help="also accept relayed requests of this job's other nodes on ADDR")
    p.add_argument("--relay-ports", metavar="LOW-HIGH",
                   help="relay port range (default: [proxy].relay_ports)")


def open_listener(args: argparse.Namespace, conf: Config) -> RelayListener | None:
    """The relay listener a primary was asked for (--relay-listen), else None. Raises
    ConfigError, SecretsError or OSError: a primary that cannot serve its relays is fatal."""
    if not args.relay_listen:
        return None
    text = args.relay_ports or conf.proxy.relay_ports
    ports = port_range(text)
    if ports is None:
        raise ConfigError(f"relay ports must be LOW-HIGH within 1-1023, got {text!r}")
    key = load_cluster_key(conf.cluster_key_file)
    sock = bind_privileged(args.relay_listen, ports, f"relay ports {text}", what="relay")
    return RelayListener(sock, key, args.job_id)
