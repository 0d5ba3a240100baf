"""Everything one Slurm job's proxy knows, shared by the routes and middlewares."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from qproxy.config import Config, Resource, UpstreamSettings
from qproxy.node.audit import AuditLog
from qproxy.node.ledger import Ledger
from qproxy.proxy.auth import JobAuth
from qproxy.proxy.metrics import ProxyMetrics
from qproxy.proxy.neighbours import GUARD, Controls, peer_uid_of
from qproxy.proxy.policy.backend import BackendPolicy
from qproxy.proxy.policy.inflight import InflightBudget
from qproxy.proxy.policy.isolation import Ownership
from qproxy.proxy.policy.lanes import LaneGate
from qproxy.proxy.policy.sessions import SessionPolicy
from qproxy.proxy.policy.timelimit import TimeLimit
from qproxy.proxy.policy.unauth import UnauthGate
from qproxy.proxy.usage import UsageBook
from qproxy.upstream.base import Upstream


@dataclass
class JobContext:
    config: Config
    job_id: str
    user: str
    account: str | None
    resource: Resource
    upstream: UpstreamSettings
    auth: JobAuth
    client: Upstream
    backend: BackendPolicy
    lanes: LaneGate
    timelimit: TimeLimit
    owned: Ownership
    ledger: Ledger
    audit: AuditLog
    tags: list[str]
    unauth: UnauthGate
    inflight: InflightBudget
    usage: UsageBook
    sessions: SessionPolicy
    metrics: ProxyMetrics
    stats: dict[str, Any] = field(
        default_factory=lambda: {"requests": 0, "bytes_in": 0, "bytes_out": 0}
    )
    # the neighbour controls of its listeners (qproxy.proxy.neighbours), over the same audit
    # log, unauthenticated gate and counters
    controls: Controls = field(init=False)

    def __post_init__(self) -> None:
        self.controls = Controls(self.job_id, self.config.proxy, self.audit, self.unauth,
                                 self.stats, self.metrics.request)


CTX: web.AppKey[JobContext] = web.AppKey("qproxy_ctx", JobContext)
__all__ = ["CTX", "GUARD", "JobContext", "peer_uid_of"]
