"""One job's proxy's metrics, in Prometheus' text format, written to a root-only file.

No new listener: the proxy rewrites ``{state_dir}/<job>/metrics.prom`` (0600 root, in the job's
0700 directory, atomically) every ``[proxy] metrics_seconds`` and at shutdown, and
``qproxy metrics`` (qproxy/admin/metrics.py) merges every proxy's file per resource. So
nothing a job user can reach serves another job's figures, and the merged view carries no
job ids or user names (labels: resource, and code / method / endpoint).

prometheus_client (not hand-written formatting): its registry, histograms and text writer
here, its text parser in the merger, so both ends speak exactly the exposition format.
Names and labels are documented in docs/operations.md ("## Metrics").
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from qproxy.files import atomic_write

if TYPE_CHECKING:
    from qproxy.proxy.policy.lanes import LaneGate

# _created series would differ per proxy and mean nothing once merged
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]

# lane waits run from 0 (a free lane) to lanes_wait_seconds (600 s by default)
LANE_WAIT_BUCKETS = (0.01, 0.1, 0.5, 1, 5, 15, 60, 300, 600, float("inf"))
# upstream calls: ~2-20 ms to the local emulator, 100 ms - seconds to a cloud service
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, float("inf"))


class ProxyMetrics:
    def __init__(self, resource: str, lanes: LaneGate) -> None:
        self.resource = resource
        self.registry = r = CollectorRegistry(auto_describe=False)
        res = ["resource"]
        Gauge("qproxy_lanes_allocated", "QPU lanes the running Slurm jobs hold", res,
              registry=r).labels(resource).set(lanes.lanes)
        Gauge("qproxy_lanes_busy", "lanes with an upstream job queued or running (or being "
              "submitted)", res, registry=r).labels(resource).set_function(lambda: lanes.in_use)
        self.lane_wait = Histogram(
            "qproxy_lane_wait_seconds", "time a job submission waited in the proxy for a free "
            "lane", res, buckets=LANE_WAIT_BUCKETS, registry=r).labels(resource)
        self._requests = Counter(
            "qproxy_requests", "requests the job proxies answered, by HTTP status; "
            "authenticated=false: requests without the job's token", [*res, "code",
                                                                       "authenticated"],
            registry=r)
        self._errors = Counter(
            "qproxy_request_errors", "requests answered with an error status (>= 400)",
            [*res, "code"], registry=r)
        self._latency = Histogram(
            "qproxy_upstream_latency_seconds", "upstream call time until the response headers",
            [*res, "operation"], buckets=LATENCY_BUCKETS, registry=r)
        self._upstream_errors = Counter(
            "qproxy_upstream_errors", "upstream calls that failed (unreachable, refused "
            "credential)", [*res, "operation"], registry=r)
        self._qpu_seconds = Counter(
            "qproxy_qpu_seconds", "quantum seconds booked for the jobs' upstream jobs", res,
            registry=r).labels(resource)
        self._qpu_total = 0.0
        self.upstream_jobs = Counter(
            "qproxy_upstream_jobs", "upstream jobs the job proxies created", res,
            registry=r).labels(resource)

    def request(self, status: int, authenticated: bool) -> None:
        code = str(status)
        self._requests.labels(self.resource, code, str(authenticated).lower()).inc()
        if status >= 400:
            self._errors.labels(self.resource, code).inc()

    def upstream_call(self, operation: str, seconds: float | None) -> None:
        """The seam's observer (qproxy.upstream.base.Observer): one upstream call of an
        operation (``submit``, ``get_job``, ``job_results``, ``s3_put`` ...), timed to its
        answer's head, or None when it failed."""
        op = operation[:40]
        if seconds is None:
            self._upstream_errors.labels(self.resource, op).inc()
        else:
            self._latency.labels(self.resource, op).observe(seconds)

    def booked(self, seconds: float) -> None:
        """An upstream job's quantum seconds, booked once it is final (usage.py)."""
        self._qpu_total += seconds
        self._qpu_seconds.inc(seconds)

    def book_total(self, total: float) -> None:
        """At shutdown: the summary's quantum seconds are the truth (cleanup books jobs the
        poller had not booked yet)."""
        if total > self._qpu_total:
            self.booked(total - self._qpu_total)

    def text(self) -> bytes:
        return generate_latest(self.registry)

    def write(self, path: Path) -> None:
        atomic_write(path, self.text(), fsync=False)
