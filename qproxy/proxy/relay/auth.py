"""Multi-node jobs, the trust part (standard library only): the cluster key, the relay header,
the primary proxy's relay listener socket, and the primary's signed address.

A job spanning several nodes has ONE primary proxy (its first node: vendor key, lane gate,
every policy, the audit log) and a relay proxy on each other node (``qproxy.proxy.relay``)
that forwards its tasks' Runtime API requests to the primary. The primary accepts relayed
requests on a second listener, on the node's cluster address and a privileged port (only
root can bind below 1024, so no user can pose as a primary on any node), and only with a
relay header signed per request (issue 24: it was a static bearer, the same for the job's
whole life and its requeues, replayable by whoever saw one request on the network):

    X-QProxy-Relay: v2 ts=<unix s> run=<R> nonce=<32 hex> sig=<64 hex>
    sig = HMAC-SHA256(job key, "qproxy-relay-v2\n" job_id \n R \n ts \n nonce \n METHOD \n
                      raw path?query \n body length ("-": none/chunked) \n node)
    job key = HMAC-SHA256(cluster_key, "qproxy-relay:" + job_id)   (``relay_token``)

The primary accepts it only within ``WINDOW`` seconds of its own clock, for its own run
(Slurm's restart count: a requeued job's old requests are void), once per nonce (a bounded
cache over the window), and for exactly the method, target, body length and node it was
signed for. The body's bytes are not bound: bodies are streamed end to end (a submission
takes its lane before its body is read; digesting first would mean buffering up to
max_request_bytes per request on both nodes); the body length is (the primary's HTTP parser
reads exactly that many bytes). See docs/security.md.

The cluster key is a root-only file, the same on every node (like munge.key); a job never
sees it, the job key or a header, so a job's tasks cannot talk to the relay listener
themselves and one job's relay cannot speak for another job. The job token is worthless there
and the relay header is refused on the job-facing listener (``qproxy.proxy.app``).

The primary's address is published in the job's AdminComment signed with the cluster key
(``sign_primary``: job id, run, ADDR:PORT), so a relay connects only where the primary's root
prolog said (issue 24: the job's user could forge it through the job's name).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import os
import re
import secrets
import socket
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    """The old static header's check (kept for tools; the relay listener takes only signed
    requests, ``RequestChecker``)."""
    if not presented:
        return False
    return hmac.compare_digest(presented.strip().lower().encode(),
                               relay_token(key, job_id).encode())


# ------------------------------------------------------------------ per-request signatures
SCHEME = "v2"
WINDOW = 30.0  # seconds either side of the primary's clock (nodes run NTP, as munge needs)
MAX_NONCES = 1 << 16  # within one window; beyond that relayed requests wait for room (401)
_HEADER_RE = re.compile(r"v2 ts=(\d{1,12}) run=(\d{1,9}) nonce=([0-9a-f]{32}) sig=([0-9a-f]{64})")


def _job_key(key: bytes, job_id: str) -> bytes:
    return bytes.fromhex(relay_token(key, job_id))


def _request_sig(job_key: bytes, job_id: str, run: int, ts: int, nonce: str, method: str,
                 target: str, length: int | None, node: str) -> str:
    msg = "\n".join(["qproxy-relay-v2", job_id, str(run), str(ts), nonce, method.upper(),
                     target, str(length) if length else "-", node])
    return hmac.new(job_key, msg.encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()


def sign_request(key: bytes, job_id: str, run: int, method: str, target: str,
                 length: int | None, node: str, *, now: float | None = None,
                 nonce: str | None = None) -> str:
    """The relay header's value for one relayed request (``target``: raw path and query)."""
    ts = int(time.time() if now is None else now)
    nonce = nonce or secrets.token_hex(16)
    sig = _request_sig(_job_key(key, job_id), job_id, run, ts, nonce, method, target, length,
                       node)
    return f"{SCHEME} ts={ts} run={run} nonce={nonce} sig={sig}"


@dataclass
class RequestChecker:
    """The primary's side: checks a relayed request's header (signature, time window, run,
    nonce seen once). ``check`` returns None when it is good, else why not (never raises)."""

    key: bytes
    job_id: str
    run: int
    window: float = WINDOW
    clock: Any = time.time
    seen: OrderedDict[str, float] = field(default_factory=OrderedDict)

    def __post_init__(self) -> None:
        self._job_key = _job_key(self.key, self.job_id)

    def check(self, value: str | None, method: str, target: str, length: int | None,
              node: str) -> str | None:
        if not value:
            return "missing relay signature"
        m = _HEADER_RE.fullmatch(value.strip())
        if not m:
            return "malformed relay signature"
        ts, run, nonce, sig = int(m.group(1)), int(m.group(2)), m.group(3), m.group(4)
        want = _request_sig(self._job_key, self.job_id, run, ts, nonce, method, target,
                            length, node)
        if not hmac.compare_digest(sig, want):
            return "bad relay signature"
        if run != self.run:
            return "relay signature of another run of this job"
        now = float(self.clock())
        if abs(now - ts) > self.window:
            return "relay signature outside its time window"
        self._prune(now)
        if nonce in self.seen:
            return "replayed relay request"
        if len(self.seen) >= MAX_NONCES:
            return "too many relayed requests in the window"
        self.seen[nonce] = ts + self.window
        return None

    def _prune(self, now: float) -> None:
        # insertion order is nearly expiry order (ts within the window); stop at a live one
        while self.seen:
            nonce, until = next(iter(self.seen.items()))
            if until >= now:
                break
            del self.seen[nonce]


# ------------------------------------------------------------------ the published address
def sign_primary(key: bytes, job_id: str, run: int, where: str) -> str:
    """The signature a primary's prolog publishes with its relay listener's ADDR:PORT."""
    msg = f"qproxy-primary\n{job_id}\n{run}\n{where}".encode()
    return hmac.new(key, msg, hashlib.sha256).hexdigest()[:32]


def check_primary(key: bytes, job_id: str, run: int, where: str, sig: str) -> bool:
    return hmac.compare_digest(sig.encode(), sign_primary(key, job_id, run, where).encode())


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
    run: int = 0

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
    p.add_argument("--run", type=int, default=0,
                   help="the job's restart count: relayed requests of other runs are refused")


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
    return RelayListener(sock, key, args.job_id, args.run)
