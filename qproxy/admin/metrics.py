"""`qproxy metrics`: this node's QPU proxies' metrics, merged per resource, in Prometheus'
text format -- on stdout, into node_exporter's textfile collector directory
(``--textfile DIR/qproxy.prom``), or served on a loopback port (``--listen 127.0.0.1:9817``).

Each job's proxy writes its own figures to ``{state_dir}/<job>/metrics.prom`` (root-only,
qproxy/proxy/metrics.py). Here they are summed per resource: counters and histograms over
every proxy this node has run (the epilog retires an ended proxy's final file, and the next
read folds it into ``{state_dir}/metrics-retired.prom``, so totals never go down when a job
ends; qproxy.node.metricsstore), gauges over
the live proxies only; ``qproxy_proxies_alive`` counts those. The output names no job and no
user, so it may be world-readable (node_exporter runs as its own user).

Besides the proxies' figures, every write adds what the node's files say without asking
Slurm (``node_gauges``): ``qproxy_reapable{what}`` (the inconsistencies ``qproxy status``
lists that the reaper would clean or that need an admin: a lease without a job, a record
without a process, a process without a record, a proxy alive 10 min past its job's Slurm end
time) and ``qproxy_usage_unbooked_total{resource}`` at 0 until an epilog could not book a
run's usage (qproxy.node.metricsstore.unbooked). ``--devices`` adds ``qproxy_device_up``:
each resource's device asked through its upstream (one status request per resource and
write; run it on one node, the monitor's).

Retiring, folding and reading hold ``{state_dir}/metrics.lock`` (exclusively), so a scrape
never sees an ended proxy's figures twice or not at all.

``--listen`` runs as root on a port every local user can reach, so it holds at most
``LISTEN_THREADS`` connections (one thread each), at most ``LISTEN_PER_UID`` of them per
non-root uid (a neighbour cannot take the scraper's), and each for at most
``LISTEN_SECONDS`` in all (a socket timeout per read/write, and the serving loop shuts a
connection down at its deadline however slowly its bytes trickle); more are closed at once.
Before: one thread per connection and no timeout (300 idle connections held 300 root threads
for as long as they liked).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from qproxy import config as cfg
from qproxy.files import atomic_write
from qproxy.node.metricsstore import (
    FOLDED_MARK,
    LIVE_FILE,
    RETIRED_FILE,
    UNBOOKED,
    locked,
    pending_files,
)
from qproxy.node.process import alive

# Gauges that describe the present: taken from live proxies only, 0 for an idle resource.
PRESENT = {"qproxy_lanes_allocated": "QPU lanes the running Slurm jobs hold",
           "qproxy_lanes_busy": "lanes with an upstream job queued or running (or being "
                                "submitted)",
           "qproxy_proxies_alive": "job proxies running on this node"}
NODE = {"qproxy_reapable": "inconsistent QPU state on this node by kind (what): what qproxy "
                           "status lists as a problem, seen from the node's files alone",
        "qproxy_device_up": "1 when the resource's device accepts jobs (its upstream's "
                            "status), 0 when it is down or unreachable"}
REAPABLE = ("lease_without_job", "record_without_process", "process_without_record",
            "past_end_time")
# a proxy this long past its job's Slurm end time outlived the job (Slurm kills a job at its
# limit plus KillWait, 30 s by default; then the epilog stops the proxy)
PAST_END_SECONDS = 600.0


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return ""


def _order(item: tuple[tuple[str, tuple[tuple[str, str], ...]], float]) -> tuple[Any, ...]:
    """Each label set together, its buckets in increasing numeric ``le`` (the exposition
    format requires it; sorting ``le`` as text would put "+Inf" first), then _count, _sum."""
    (sample, labels), _ = item
    le = dict(labels).get("le")
    rest = tuple(kv for kv in labels if kv[0] != "le")
    return (rest, 0 if le is not None else 1, float(le) if le is not None else 0.0, sample)


class Merged:
    """Samples summed by (family, sample name, labels), families kept in first-seen order."""

    def __init__(self) -> None:
        self.families: dict[str, Metric] = {}
        self.values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}

    def add(self, text: str, gauges: bool = True) -> None:
        try:
            parsed = list(text_string_to_metric_families(text))
        except ValueError:  # a torn or foreign file: skip it rather than fail the scrape
            return
        for fam in parsed:
            if fam.type == "gauge" and not gauges:
                continue
            self.families.setdefault(fam.name, Metric(fam.name, fam.documentation, fam.type))
            values = self.values.setdefault(fam.name, {})
            for s in fam.samples:
                key = (s.name, tuple(sorted(s.labels.items())))
                values[key] = values.get(key, 0.0) + s.value

    def set_gauge(self, name: str, labels: dict[str, str], value: float) -> None:
        self.families.setdefault(name, Metric(name, PRESENT.get(name) or NODE.get(name, ""),
                                              "gauge"))
        values = self.values.setdefault(name, {})
        key = (name, tuple(sorted(labels.items())))
        values[key] = values.get(key, 0.0) + value

    def zero_counter(self, family: str, labels: dict[str, str]) -> None:
        """The counter's sample at 0 unless a file added one (a counter that never rose
        still answers a query)."""
        self.families.setdefault(family, Metric(family, UNBOOKED.get(family, ""), "counter"))
        key = (family + "_total", tuple(sorted(labels.items())))
        self.values.setdefault(family, {}).setdefault(key, 0.0)

    def metrics(self, kinds: Iterable[str] | None = None) -> list[Metric]:
        out = []
        for name, fam in self.families.items():
            if kinds is not None and fam.type not in kinds:
                continue
            m = Metric(fam.name, fam.documentation, fam.type)
            for (sample, labels), value in sorted(self.values[name].items(), key=_order):
                m.add_sample(sample, dict(labels), value)
            out.append(m)
        return out

    def text(self, kinds: Iterable[str] | None = None) -> bytes:
        registry = CollectorRegistry(auto_describe=False)
        metrics = self.metrics(kinds)

        class _Fixed:
            def collect(self) -> list[Metric]:
                return metrics

        registry.register(_Fixed())
        return generate_latest(registry)


def fold(state_dir: Path) -> int:
    """Fold the retired proxies' files (qproxy.node.metricsstore.retire) into the node's
    totals and remove them; the caller holds the lock exclusively. Returns how many."""
    retired = _read(state_dir / RETIRED_FILE)
    first, _, _ = retired.partition("\n")
    done = set(first[len(FOLDED_MARK):].split()) if first.startswith(FOLDED_MARK) else set()
    files = pending_files(state_dir)
    new = [f for f in files if f.name not in done]
    if new:
        merged = Merged()
        merged.add(retired, gauges=False)
        for f in new:
            merged.add(_read(f), gauges=False)
        mark = (FOLDED_MARK + " ".join(f.name for f in new) + "\n").encode()
        atomic_write(state_dir / RETIRED_FILE, mark + merged.text(("counter", "histogram")),
                     fsync=False)
    for f in files:
        f.unlink(missing_ok=True)
    return len(new)


def _proxy_pid(job_dir: Path) -> tuple[int, str] | None:
    try:
        doc = json.loads((job_dir / "record.json").read_text())
        return int(doc["pid"]), str(doc.get("resource") or "")
    except (OSError, ValueError, KeyError, TypeError):
        return None


def node_gauges(conf: cfg.Config, now: float | None = None) -> dict[str, int]:
    """``qproxy_reapable``'s values: qproxy status' problems that need no Slurm answer, found
    by the same reads (lease.peek, the record's pid checked as this job's proxy,
    reap.orphan_proxies). Whether Slurm still runs a job is the reaper's question (every
    5 min); here a proxy PAST_END_SECONDS past its job's end time stands for it."""
    from qproxy.node.process import is_our_proxy
    from qproxy.slurm import lease
    from qproxy.slurm.reap import orphan_proxies
    from qproxy.slurm.state import JobState, job_dirs

    now = time.time() if now is None else now
    found = dict.fromkeys(REAPABLE, 0)
    dirs = set(job_dirs(conf))
    for held in lease.peek(conf).values():
        found["lease_without_job"] += sum(1 for job in held if job not in dirs)
    for job_id in sorted(dirs):
        rec = JobState.of(conf, job_id).read_record()
        if rec is None:
            continue
        if not (is_our_proxy(rec.pid, job_id, rec.spare) and alive(rec.pid)):
            found["record_without_process"] += 1
        elif rec.end_time and now > rec.end_time + PAST_END_SECONDS:
            found["past_end_time"] += 1
    found["process_without_record"] = len(orphan_proxies(conf))
    return found


def device_gauges(conf: cfg.Config, timeout: float) -> dict[str, int]:
    """resource -> 1 (online) / 0 (offline, reserved for others, unreachable), each device
    asked through its upstream with the centre's credential (qproxy.admin.devices)."""
    from qproxy.admin.devices import probe

    return {d.resource: int(d.online) for d in probe(conf, timeout)}


def collect(conf: cfg.Config, devices: float | None = None) -> Merged:
    """The node's merged metrics (see the module's docstring); ``devices``: ask each
    device's status with this timeout (seconds)."""
    merged = Merged()
    state = conf.state_dir
    for name in sorted(conf.resources):  # an idle resource shows 0, not nothing
        for gauge in PRESENT:
            merged.set_gauge(gauge, {"resource": name}, 0.0)
    for what, n in node_gauges(conf).items():
        merged.set_gauge("qproxy_reapable", {"what": what}, float(n))
    if devices is not None:
        for name, up in sorted(device_gauges(conf, devices).items()):
            merged.set_gauge("qproxy_device_up", {"resource": name}, float(up))
    with locked(state):
        fold(state)
        merged.add(_read(state / RETIRED_FILE), gauges=False)
        try:
            dirs = sorted(p for p in state.iterdir() if p.name.isdigit() and p.is_dir())
        except OSError:
            dirs = []
        for job_dir in dirs:
            text = _read(job_dir / LIVE_FILE)
            if not text:
                continue
            rec = _proxy_pid(job_dir)
            running = rec is not None and alive(rec[0])
            merged.add(text, gauges=running)  # a dead proxy's gauges describe nothing
            if running and rec is not None and rec[1]:
                merged.set_gauge("qproxy_proxies_alive", {"resource": rec[1]}, 1.0)
    for name in sorted(conf.resources):  # 0 until an epilog could not book a run's usage
        for counter in UNBOOKED:
            merged.zero_counter(counter, {"resource": name})
    return merged


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


LISTEN_THREADS = 16
LISTEN_PER_UID = 4
LISTEN_SECONDS = 5.0


def _bounded_server(host: str, port: int, handler: Any) -> Any:
    from http.server import ThreadingHTTPServer

    from qproxy.node.peer import peer_uid

    class Bounded(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 128  # refused at once rather than left in a short backlog

        def __init__(self) -> None:
            super().__init__((host, port), handler)
            self.lock = threading.Lock()
            self.held: dict[socket.socket, tuple[float, int | None]] = {}
            self.per_uid: Counter[int | None] = Counter()
            self.refused = 0

        def process_request(self, request: Any, client_address: Any) -> None:
            uid = peer_uid(request)
            with self.lock:
                full = len(self.held) >= LISTEN_THREADS or (
                    uid != 0 and self.per_uid[uid] >= LISTEN_PER_UID)
                if not full:
                    self.held[request] = (time.monotonic() + LISTEN_SECONDS, uid)
                    self.per_uid[uid] += 1
            if full:
                self.refused += 1
                self.shutdown_request(request)
                return
            request.settimeout(LISTEN_SECONDS)
            super().process_request(request, client_address)

        def process_request_thread(self, request: Any, client_address: Any) -> None:
            try:
                super().process_request_thread(request, client_address)
            finally:
                with self.lock:
                    _, uid = self.held.pop(request, (0.0, None))
                    self.per_uid[uid] -= 1
                    if self.per_uid[uid] <= 0:
                        del self.per_uid[uid]

        def service_actions(self) -> None:  # serve_forever's loop, every poll interval
            now = time.monotonic()
            with self.lock:
                late = [s for s, (deadline, _) in self.held.items() if deadline < now]
            for s in late:  # its thread's blocked read or write returns at once
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    return Bounded()


def _serve(conf: cfg.Config, listen: str, devices: float | None) -> int:
    from prometheus_client.exposition import MetricsHandler

    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if not _loopback(host) or not port.isdigit():
        print(f"qproxy metrics: --listen needs a loopback HOST:PORT, got {listen!r} (put a "
              "scraper on the node, or use --textfile with node_exporter)", file=sys.stderr)
        return 2

    class _Live:
        def collect(self) -> list[Metric]:
            return collect(conf, devices).metrics()

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Live())
    handler = MetricsHandler.factory(registry)
    try:
        server = _bounded_server(host, int(port), handler)
    except OSError as exc:
        print(f"qproxy metrics: cannot listen on {listen}: {exc}", file=sys.stderr)
        return 1
    print(f"qproxy metrics: serving http://{listen}/metrics", file=sys.stderr, flush=True)
    try:
        server.serve_forever(poll_interval=0.25)
    except KeyboardInterrupt:
        pass
    return 0


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="qproxy metrics", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(cfg.DEFAULT_CONFIG_PATH))
    p.add_argument("--textfile", type=Path,
                   help="write here atomically (mode 0644), e.g. "
                   "/var/lib/prometheus/node-exporter/qproxy.prom")
    p.add_argument("--every", type=float, default=0.0,
                   help="with --textfile: rewrite it every this many seconds (0: once)")
    p.add_argument("--listen", help="serve /metrics on this loopback HOST:PORT instead")
    p.add_argument("--devices", action="store_true",
                   help="add qproxy_device_up: ask each resource's device through its "
                   "upstream at every write (one node is enough: the monitor's)")
    p.add_argument("--device-timeout", type=float, default=10.0,
                   help="seconds per device status request (default 10)")
    args = p.parse_args(argv)
    try:
        conf = cfg.load(args.config)
    except cfg.ConfigError as exc:
        print(f"qproxy metrics: {exc}", file=sys.stderr)
        return 2
    devices = args.device_timeout if args.devices else None
    if args.listen:
        return _serve(conf, args.listen, devices)
    while True:
        text = collect(conf, devices).text()
        if args.textfile is None:
            sys.stdout.buffer.write(text)
            return 0
        try:
            atomic_write(args.textfile, text, 0o644, fsync=False)
        except OSError as exc:
            print(f"qproxy metrics: cannot write {args.textfile}: {exc}", file=sys.stderr)
            return 1
        if args.every <= 0:
            return 0
        time.sleep(args.every)
