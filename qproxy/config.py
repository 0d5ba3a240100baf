"""Admin configuration (TOML), shared by the proxy, the Slurm hooks and the tools.

One file describes the centre: where per-job state and audit logs live, which upstream
services exist (and which named secret holds each one's credential) and which QPU resources
users may ask for with ``--q_backend``. Secrets themselves never live here: an upstream names
a key in the secrets file (see ``qproxy.secrets``), so this file can be world-readable.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_CONFIG_PATH = Path("/etc/qproxy/qproxy.toml")


class ConfigError(ValueError):
    """The admin configuration is missing, unreadable or inconsistent."""


@dataclass(frozen=True)
class ProxySettings:
    host: str = "127.0.0.1"
    # Largest request body a job may send (bytes); larger ones get 413.
    max_request_bytes: int = 64 * 1024 * 1024
    # Largest response body relayed to a job (bytes); 0 = no limit (bodies are streamed).
    max_response_bytes: int = 0
    # Lifetime of the JWTs the proxy mints for the job.
    token_ttl_seconds: int = 3600
    # "wait": extra submissions beyond the lane count wait in the proxy; "refuse": 429.
    lanes_mode: str = "wait"
    # How long a waiting submission may wait for a lane before 429 (seconds).
    lanes_wait_seconds: float = 600.0
    # Seconds task-env waits for the job's proxy to become ready (at most 45 s: see taskenv).
    start_timeout_seconds: float = 20.0
    # How often the proxy polls upstream for the status of this job's active jobs (lanes).
    status_poll_seconds: float = 1.0
    # Idle proxies each node keeps started ahead of its next QPU job (0 = none): the job's
    # proxy then serves ~200 ms sooner (see qproxy/spare.py). Each costs ~50 MB while idle.
    spares: int = 1
    # A spare nobody claimed exits after this long (seconds).
    spare_idle_seconds: float = 600.0


@dataclass(frozen=True)
class Upstream:
    name: str
    # Runtime API base, e.g. https://quantum.cloud.ibm.com/api/v1 or http://127.0.0.1:8290/api/v1
    url: str
    # IAM base (token endpoint is {iam_url}/identity/token), e.g. https://iam.cloud.ibm.com
    iam_url: str
    # Instance CRN sent upstream as Service-CRN.
    instance: str
    # Name of the entry in the secrets file holding this upstream's API key.
    api_key_secret: str
    # IBM-API-Version header to send upstream when the client did not send one.
    api_version: str = "2025-05-01"
    verify_tls: bool = True


@dataclass(frozen=True)
class Resource:
    """A QPU users may request: ``--q_backend=<name>``."""

    name: str
    upstream: str
    # Backend name upstream (a centre may expose ibm_fez under a local name).
    backend: str
    # Execution lanes of this device (the GRES count / licence count per device).
    lanes: int = 1
    # Empty tuples mean "everyone".
    allowed_users: tuple[str, ...] = ()
    allowed_accounts: tuple[str, ...] = ()


@dataclass(frozen=True)
class Config:
    path: Path
    proxy: ProxySettings
    state_dir: Path
    audit_dir: Path
    secrets_file: Path
    secrets_key_file: Path
    upstreams: dict[str, Upstream] = field(default_factory=dict)
    resources: dict[str, Resource] = field(default_factory=dict)

    def resource(self, name: str) -> Resource:
        try:
            return self.resources[name]
        except KeyError:
            known = ", ".join(sorted(self.resources)) or "none configured"
            raise ConfigError(f"unknown QPU backend {name!r} (known: {known})") from None

    def upstream_for(self, resource: Resource) -> Upstream:
        return self.upstreams[resource.upstream]


def _table(data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"[{key}] must be a table")
    return value


def _build(cls: type, where: str, values: dict[str, Any], **extra: Any) -> Any:
    try:
        return cls(**extra, **values)
    except TypeError as exc:  # unknown or missing keys
        raise ConfigError(f"{where}: {exc}") from None


def _str_tuple(where: str, values: dict[str, Any], key: str) -> None:
    if key in values:
        items = values[key]
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise ConfigError(f"{where}.{key} must be a list of strings")
        values[key] = tuple(items)


def load(path: str | Path = DEFAULT_CONFIG_PATH) -> Config:
    """Read and validate the admin config; raise ConfigError with a one-line reason."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config {path} is not valid TOML: {exc}") from None

    base = path.parent
    proxy = _build(ProxySettings, "[proxy]", dict(_table(data, "proxy")))
    if proxy.lanes_mode not in ("wait", "refuse"):
        raise ConfigError("[proxy].lanes_mode must be 'wait' or 'refuse'")
    if proxy.spares < 0 or proxy.spare_idle_seconds <= 0:
        raise ConfigError("[proxy].spares must be >= 0 and spare_idle_seconds > 0")

    paths = _table(data, "paths")

    def _path(key: str, default: str) -> Path:
        p = Path(paths.get(key, default))
        return p if p.is_absolute() else (base / p)

    upstreams: dict[str, Upstream] = {}
    for name, values in _table(data, "upstreams").items():
        upstreams[name] = _build(Upstream, f"[upstreams.{name}]", dict(values), name=name)

    resources: dict[str, Resource] = {}
    for name, values in _table(data, "resources").items():
        where = f"[resources.{name}]"
        values = dict(values)
        _str_tuple(where, values, "allowed_users")
        _str_tuple(where, values, "allowed_accounts")
        res = _build(Resource, where, values, name=name)
        if res.upstream not in upstreams:
            raise ConfigError(f"{where}: upstream {res.upstream!r} is not defined")
        if res.lanes < 1:
            raise ConfigError(f"{where}: lanes must be >= 1")
        resources[name] = res

    return Config(
        path=path,
        proxy=proxy,
        state_dir=_path("state_dir", "/run/qproxy"),
        audit_dir=_path("audit_dir", "/var/log/qproxy"),
        secrets_file=_path("secrets_file", "/etc/qproxy/secrets.toml"),
        secrets_key_file=_path("secrets_key_file", "/etc/qproxy/secrets.key"),
        upstreams=upstreams,
        resources=resources,
    )
