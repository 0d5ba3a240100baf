"""Admin configuration (TOML), shared by the proxy, the Slurm hooks and the tools.

One file describes the centre: where per-job state and audit logs live, which upstream
services exist (and which named secret holds each one's credential) and which QPU resources
users may ask for with ``--q_backend``. Secrets themselves never live here: an upstream names
a key in the secrets file (see ``qproxy.secrets``), so this file can be world-readable.

``load()`` checks each setting against the type of its dataclass field and the value rule in
the field's metadata, so a new field is validated with no second place to edit. It reports
every problem at once (an admin fixing a file should not need one round trip per typo) as
one ConfigError: always a summary line, then one indented line per problem, also when there
is only one::

    config /etc/qproxy/qproxy.toml has 2 problems:
      [proxy].lanes_mode must be "wait" or "refuse", got "queue"
      [resources.ibm_fez].lanes must be an integer, got "2"

A file that cannot be read or parsed is a one-line ConfigError (``cannot read config ...``,
``config ... is not valid TOML: ...``): there is nothing more to report.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple, TypeVar, get_type_hints
from urllib.parse import urlsplit

DEFAULT_CONFIG_PATH = Path("/etc/qproxy/qproxy.toml")


class ConfigError(ValueError):
    """The admin configuration is missing, unreadable or inconsistent."""


# A hand-written validator, not pydantic or jsonschema: the prolog and task-env import this
# module on every QPU job's start and the proxy must stay light, and the schema is a few flat
# tables whose types the dataclasses below already state.
class _Rule(NamedTuple):
    need: str  # completes "... must be {need}"
    ok: Callable[[Any], bool]


def _rule(need: str, ok: Callable[[Any], bool]) -> dict[str, _Rule]:
    """Field metadata: the value check load() applies once the value has the right type."""
    return {"rule": _Rule(need, ok)}


def _is_http_url(value: str) -> bool:
    try:
        parts = urlsplit(value)
    except ValueError:  # e.g. an unbalanced "[" in the host
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _is_loopback_host(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_upstream_url(value: str) -> bool:
    """https:// anywhere, plain http:// only to a loopback address: the proxy sends the
    centre's key over it, and only there can it check who listens (docs/security.md)."""
    if not _is_http_url(value):
        return False
    parts = urlsplit(value)
    return parts.scheme == "https" or _is_loopback_host(parts.hostname or "")




def port_range(value: str) -> tuple[int, int] | None:
    """``"600-1023"`` -> (600, 1023); None unless 1 <= LOW <= HIGH <= 1023."""
    m = re.fullmatch(r"\s*(\d{1,5})\s*-\s*(\d{1,5})\s*", value)
    if not m:
        return None
    low, high = int(m.group(1)), int(m.group(2))
    return (low, high) if 1 <= low <= high <= 1023 else None


_POSITIVE = _rule("> 0", lambda v: v > 0)
_NOT_NEGATIVE = _rule(">= 0", lambda v: v >= 0)
_NON_EMPTY = _rule("non-empty", bool)
_UPSTREAM_URL = _rule(
    "an https:// URL, or http:// to a loopback address (127.0.0.1, ::1, localhost)",
    _is_upstream_url)


@dataclass(frozen=True)
class ProxySettings:
    host: str = field(default="127.0.0.1", metadata=_NON_EMPTY)
    # Largest request body a job may send (bytes); larger ones get 413.
    max_request_bytes: int = field(default=64 * 1024 * 1024, metadata=_POSITIVE)
    # Largest response body relayed to a job (bytes); 0 = no limit (bodies are streamed).
    max_response_bytes: int = field(default=0, metadata=_NOT_NEGATIVE)
    # Lifetime of the JWTs the proxy mints for the job.
    token_ttl_seconds: int = field(default=3600, metadata=_POSITIVE)
    # "wait": extra submissions beyond the lane count wait in the proxy; "refuse": 429.
    lanes_mode: str = field(
        default="wait", metadata=_rule('"wait" or "refuse"', lambda v: v in ("wait", "refuse"))
    )
    # How long a waiting submission may wait for a lane before 429 (seconds).
    lanes_wait_seconds: float = field(default=600.0, metadata=_NOT_NEGATIVE)
    # Seconds task-env waits for the job's proxy to become ready (at most 45 s: see taskenv).
    start_timeout_seconds: float = field(default=20.0, metadata=_POSITIVE)
    # How often the proxy polls upstream for the status of this job's active jobs (lanes).
    status_poll_seconds: float = field(default=1.0, metadata=_POSITIVE)
    # How often the proxy rewrites its metrics file ({state_dir}/<job>/metrics.prom, root
    # 0600; merged by `qproxy metrics`), and once more at shutdown. 0 = only at shutdown.
    metrics_seconds: float = field(default=5.0, metadata=_NOT_NEGATIVE)
    # Spare proxies each node keeps started ahead of its QPU jobs (0 = none): each forks the
    # jobs' proxies, which then serve ~0.1-0.4 s sooner and share its imported code (~9 vs ~25
    # MB private memory per job; see qproxy/proxy/spare.py). Each costs ~9 MB USS.
    spares: int = field(default=1, metadata=_NOT_NEGATIVE)
    # A spare exits after this long without a claim (seconds).
    spare_idle_seconds: float = field(default=600.0, metadata=_POSITIVE)
    # The cgroup every proxy and spare enters at the root of each cgroup hierarchy before it
    # runs, so none lives in the cgroup of the job whose prolog started it
    # (qproxy/node/cgroup.py); "" leaves them where the prolog runs.
    cgroup: str = field(default="qproxy", metadata=_rule(
        "a cgroup name (letters, digits, '_', '-', '.'; not starting with '.') or empty",
        lambda v: v == "" or re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}", v) is not None))
    # The job's proxy listens on the first free port of this range on ``host`` that the
    # services database does not name. Privileged ports only: when a proxy dies, no user
    # can bind its port and answer the job's requests (qproxy/node/ports.py).
    ports: str = field(default="100-599", metadata=_rule(
        '"LOW-HIGH" with 1 <= LOW <= HIGH <= 1023 (privileged ports)',
        lambda v: port_range(v) is not None))
    # Multi-node jobs (qproxy.proxy.relay): the primary proxy's relay listener takes the
    # first free port of this range on the node's cluster address. Privileged ports only:
    # no user can then bind one and pose as a job's primary on any node.
    relay_ports: str = field(default="600-1023", metadata=_rule(
        '"LOW-HIGH" with 1 <= LOW <= HIGH <= 1023 (privileged ports)',
        lambda v: port_range(v) is not None))
    # How long a non-first node's prolog waits for the primary to publish its address.
    relay_wait_seconds: float = field(default=30.0, metadata=_POSITIVE)
    # --- hostile neighbours (docs/security.md) ---
    # Per-job audit log size cap (bytes): past it one audit_full record, then the job's
    # authenticated requests get 503 (never unaudited work). 0 = no cap.
    audit_max_bytes: int = field(default=64 * 1024 * 1024, metadata=_NOT_NEGATIVE)
    # Unauthenticated requests (anyone on the node can send them): a token bucket per proxy,
    # refill per second and burst; past it 429. They are audited as one summary record per
    # unauth_summary_seconds with counts, never one record each.
    unauth_rate: float = field(default=20.0, metadata=_POSITIVE)
    unauth_burst: int = field(default=50, metadata=_POSITIVE)
    unauth_summary_seconds: float = field(default=10.0, metadata=_POSITIVE)
    # Open connections: at most max_connections in all, of which connections from uids other
    # than the job's (and root) hold at most max_connections_others (nginx's limit_conn).
    max_connections: int = field(default=256, metadata=_POSITIVE)
    max_connections_others: int = field(default=16, metadata=_NOT_NEGATIVE)
    # Seconds from a connection's (or a keep-alive request's) first byte to its complete
    # headers (nginx client_header_timeout); a new connection gets this long for them too.
    client_header_timeout_seconds: float = field(default=10.0, metadata=_POSITIVE)
    # Longest wait for the next chunk of a request body (nginx client_body_timeout): 408.
    client_body_timeout_seconds: float = field(default=30.0, metadata=_POSITIVE)
    # Idle keep-alive connections close after this long, and after this many requests.
    keepalive_timeout_seconds: float = field(default=75.0, metadata=_POSITIVE)
    keepalive_requests: int = field(default=1000, metadata=_POSITIVE)
    # Request bodies held in memory at once, all requests together (bytes): a body is read
    # only once its size fits (a submission also takes its lane first). Must be at least
    # max_request_bytes (load() checks).
    inflight_bytes: int = field(default=128 * 1024 * 1024, metadata=_POSITIVE)
    # --- the node's audit space (qproxy/node/auditbudget.py, docs/security.md) ---
    # What the audit logs of all jobs on a node may hold in audit_dir, and one user's logs
    # of them (bytes; 0 = no such limit): past a user's share that user's jobs get 503, other
    # users keep node - user. Must be at least audit_max_bytes (load() checks). Archiving
    # logs frees the space (the ledger is rebuilt from audit_dir before a refusal).
    audit_node_max_bytes: int = field(default=4 << 30, metadata=_NOT_NEGATIVE)
    audit_user_max_bytes: int = field(default=1 << 30, metadata=_NOT_NEGATIVE)
    # A run of error records of the same shape (status, method, route) within this many
    # seconds is written as its first record plus one ``repeated`` record (count, last).
    # 0 = every record in full.
    audit_repeat_seconds: float = field(default=10.0, metadata=_NOT_NEGATIVE)


# The vendor APIs an upstream may speak; UPSTREAM_KINDS (after the settings classes) gives
# each one its settings table.
_UPSTREAM_KIND_NAMES = ("ibm-quantum-system", "ibm-runtime")


@dataclass(frozen=True, kw_only=True)
class UpstreamSettings:
    """What every kind of upstream has: an API base, IBM Cloud IAM for its token, the
    instance CRN and the secret holding the key. Each kind's table adds its own fields (a
    subclass below, named in UPSTREAM_KINDS); ``load()`` checks a table against its kind's."""

    name: str
    # The API base, e.g. https://quantum.cloud.ibm.com/api/v1 (ibm-runtime), or
    # https://direct-access-x.quantum-computing.cloud.ibm.com:30060 (ibm-quantum-system)
    url: str = field(metadata=_UPSTREAM_URL)
    # IAM base (token endpoint is {iam_url}/identity/token), e.g. https://iam.cloud.ibm.com
    iam_url: str = field(metadata=_UPSTREAM_URL)
    # Instance CRN sent upstream as Service-CRN.
    instance: str = field(metadata=_NON_EMPTY)
    # Name of the entry in the secrets file holding this upstream's API key.
    api_key_secret: str = field(metadata=_NON_EMPTY)
    verify_tls: bool = True
    # Which vendor's API this upstream speaks: one of UPSTREAM_KINDS (qproxy.upstream.KINDS).
    kind: str = field(default="ibm-runtime", metadata=_rule(
        "a known upstream kind (" + ", ".join(sorted(_UPSTREAM_KIND_NAMES)) + ")",
        lambda v: v in UPSTREAM_KINDS))

    def secret_names(self) -> tuple[str, ...]:
        """The secrets-file entries this upstream's client needs (qproxy.secrets)."""
        return (self.api_key_secret,)


@dataclass(frozen=True, kw_only=True)
class RuntimeUpstreamSettings(UpstreamSettings):
    """``kind = "ibm-runtime"``: IBM Quantum Platform's Qiskit Runtime API (or the emulator)."""

    # IBM-API-Version header to send upstream when the client did not send one.
    api_version: str = "2025-05-01"


@dataclass(frozen=True, kw_only=True)
class QuantumSystemSettings(UpstreamSettings):
    """``kind = "ibm-quantum-system"``: an on-prem IBM system's Quantum System API, whose jobs
    read their input and write their results through presigned URLs of the centre's S3
    bucket (qproxy/upstream/quantum_system.py)."""

    # S3-compatible endpoint and bucket the proxy stores each job's input, results and logs
    # in; the keys are {input,results,logs}_<job id>.json, deleted by the epilog.
    s3_endpoint: str = field(metadata=_UPSTREAM_URL)
    s3_bucket: str = field(metadata=_rule(
        "an S3 bucket name (3-63 of a-z 0-9 . -)",
        lambda v: re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", v) is not None))
    s3_region: str = field(default="us-east-1", metadata=_NON_EMPTY)
    # Names of the secrets-file entries holding the S3 access key id and secret access key.
    s3_access_key_secret: str = field(metadata=_NON_EMPTY)
    s3_secret_key_secret: str = field(metadata=_NON_EMPTY)
    # Longest wait between two tries of a submission the system refused for now (429: every
    # lane busy, 423: reserved); the job sees it Queued meanwhile.
    retry_max_seconds: float = field(default=10.0, metadata=_POSITIVE)

    def secret_names(self) -> tuple[str, ...]:
        return (self.api_key_secret, self.s3_access_key_secret, self.s3_secret_key_secret)


# The vendor APIs an upstream may speak ([upstreams.NAME] kind) and each one's settings table.
# Owned here so that the config needs nothing above it; qproxy.upstream.KINDS maps each kind
# to its client class (a unit test keeps the two equal).
UPSTREAM_KINDS: dict[str, type[UpstreamSettings]] = dict(zip(
    _UPSTREAM_KIND_NAMES, (QuantumSystemSettings, RuntimeUpstreamSettings), strict=True))


@dataclass(frozen=True)
class Resource:
    """A QPU users may request: ``--q_backend=<name>``."""

    name: str
    # Must name an [upstreams.*] table (load() checks).
    upstream: str
    # Backend name upstream (a centre may expose ibm_fez under a local name).
    backend: str = field(metadata=_NON_EMPTY)
    # Execution lanes of this device (the GRES count / licence count per device).
    lanes: int = field(default=1, metadata=_rule(">= 1", lambda v: v >= 1))
    # Whether jobs may open sessions in "dedicated" mode (the whole device for one user);
    # otherwise only "batch" sessions. Open sessions count against the job's lanes.
    dedicated_sessions: bool = False
    # Empty tuples mean "everyone".
    allowed_users: tuple[str, ...] = ()
    allowed_accounts: tuple[str, ...] = ()


@dataclass(frozen=True)
class AccountingSettings:
    """Where each job's QPU use is booked besides ``{audit_dir}/usage.jsonl``."""

    # Write the job's QPU seconds into its Slurm accounting record (AdminComment, through
    # `sacctmgr modify job`, which slurmdbd accepts from root after the job ended; users
    # cannot change AdminComment). Needs slurmdbd; off by default.
    admin_comment: bool = False
    # How long the epilog's background sacctmgr may take before it is given up.
    sacctmgr_timeout_seconds: float = field(default=30.0, metadata=_POSITIVE)


def _paths_key(default: str) -> dict[str, str]:
    """Field metadata: a Config path read from ``[paths]``, with its default there."""
    return {"paths_default": default}


@dataclass(frozen=True)
class Config:
    path: Path
    proxy: ProxySettings
    # From [paths]; relative ones are relative to the config file's directory. (No dataclass
    # defaults: the defaults below are what load() uses when [paths] omits a key.)
    state_dir: Path = field(metadata=_paths_key("/run/qproxy"))
    audit_dir: Path = field(metadata=_paths_key("/var/log/qproxy"))
    secrets_file: Path = field(metadata=_paths_key("/etc/qproxy/secrets.toml"))
    secrets_key_file: Path = field(metadata=_paths_key("/etc/qproxy/secrets.key"))
    # Shared by every node (like munge.key), root-only: authenticates relayed requests.
    cluster_key_file: Path = field(metadata=_paths_key("/etc/qproxy/cluster.key"))
    # HMAC key of the audit chain (root only, created 0600 on first use). Default:
    # audit.key next to secrets_file. Must not be inside audit_dir.
    audit_key_file: Path = field(metadata=_paths_key(""))
    upstreams: dict[str, UpstreamSettings] = field(default_factory=dict)
    resources: dict[str, Resource] = field(default_factory=dict)
    accounting: AccountingSettings = field(default_factory=AccountingSettings)

    def resource(self, name: str) -> Resource:
        try:
            return self.resources[name]
        except KeyError:
            known = ", ".join(sorted(self.resources)) or "none configured"
            raise ConfigError(f"unknown QPU backend {name!r} (known: {known})") from None

    def upstream_for(self, resource: Resource) -> UpstreamSettings:
        return self.upstreams[resource.upstream]


# ---------------------------------------------------------------------------- validation
def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # TOML true is no lane count


class _Kind(NamedTuple):
    need: str  # completes "... must be {need}"
    accepts: Callable[[Any], bool]
    convert: Callable[[Any], Any]


# Each field type the dataclasses use, as TOML spells it. A field of another type is a
# programming error: _specs() raises KeyError (the unit tests load a config).
_KINDS: dict[object, _Kind] = {
    int: _Kind("an integer", _is_int, int),
    float: _Kind("a number", lambda v: _is_int(v) or isinstance(v, float), float),
    str: _Kind("a string", lambda v: isinstance(v, str), str),
    bool: _Kind("true or false", lambda v: isinstance(v, bool), bool),
    tuple[str, ...]: _Kind(
        "a list of strings",
        lambda v: isinstance(v, list) and all(isinstance(i, str) for i in v),
        tuple,
    ),
    Path: _Kind("a string (a path)", lambda v: isinstance(v, str), Path),
}

_BASE_UPSTREAM_FIELDS = frozenset(f.name for f in fields(UpstreamSettings))
_TABLES = ("paths", "proxy", "accounting", "upstreams", "resources")


class _Spec(NamedTuple):
    name: str
    kind: _Kind
    required: bool
    rule: _Rule | None


def _specs(cls: type) -> tuple[_Spec, ...]:
    """The settings of a table whose keys are the fields of dataclass ``cls``."""
    hints = get_type_hints(cls)
    return tuple(
        _Spec(
            f.name,
            _KINDS[hints[f.name]],
            f.default is MISSING and f.default_factory is MISSING,
            f.metadata.get("rule"),
        )
        for f in fields(cls)
    )


def _path_specs() -> tuple[_Spec, ...]:
    hints = get_type_hints(Config)
    return tuple(
        _Spec(f.name, _KINDS[hints[f.name]], False, None)
        for f in fields(Config)
        if "paths_default" in f.metadata
    )


def _show(value: Any) -> str:
    """A TOML value roughly as the admin wrote it: strings quoted, booleans in lower case."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "[" + ", ".join(_show(i) for i in value) + "]"
    return str(value)


def _table(where: str, value: Any, problems: list[str]) -> dict[str, Any] | None:
    if isinstance(value, dict):
        return value
    problems.append(f"{where} must be a table")
    return None


def _read(
    where: str, table: Mapping[str, Any], specs: tuple[_Spec, ...], problems: list[str]
) -> dict[str, Any]:
    """The valid, converted settings of ``table``; a problem line for each one that is not."""
    known = {s.name: s for s in specs}
    for key in table:
        if key not in known:
            names = ", ".join(known)
            problems.append(f"{where}.{key} is not a known setting (known: {names})")
    values: dict[str, Any] = {}
    for spec in specs:
        if spec.name not in table:
            if spec.required:
                problems.append(f"{where}.{spec.name} is required")
            continue
        raw = table[spec.name]
        if not spec.kind.accepts(raw):
            problems.append(f"{where}.{spec.name} must be {spec.kind.need}, got {_show(raw)}")
        elif spec.rule is not None and not spec.rule.ok(raw):
            problems.append(f"{where}.{spec.name} must be {spec.rule.need}, got {_show(raw)}")
        else:
            values[spec.name] = spec.kind.convert(raw)
    return values


_T = TypeVar("_T")


def _build(cls: type[_T], where: str, value: Any, problems: list[str], **fixed: Any) -> _T | None:
    """An instance of ``cls`` from its TOML table (``fixed``: fields not read from it, the
    table's name), or None after recording why not."""
    table = _table(where, value, problems)
    if table is None:
        return None
    before = len(problems)
    specs = tuple(s for s in _specs(cls) if s.name not in fixed)
    values = _read(where, table, specs, problems)
    return cls(**fixed, **values) if len(problems) == before else None


def audit_space_problems(table: Mapping[str, Any]) -> list[str]:
    """The audit limits of a [proxy] table that are set (not 0) must nest: a job's cap within
    its user's share within the node's budget. Read from the raw table (defaults for what it
    omits), so that this is reported along with the table's other problems; a value that is
    not a valid size is reported by its own check."""
    names = ("audit_max_bytes", "audit_user_max_bytes", "audit_node_max_bytes")
    limits = [(n, table.get(n, getattr(ProxySettings, n))) for n in names]
    if not all(_is_int(v) and v >= 0 for _, v in limits):
        return []
    limits = [(n, v) for n, v in limits if v]
    return [f"[proxy].{small} ({low}) must be at most {big} ({high})"
            for (small, low), (big, high) in zip(limits, limits[1:], strict=False)
            if low > high]


def load(path: str | Path = DEFAULT_CONFIG_PATH) -> Config:
    """Read and validate the admin config; raise one ConfigError listing every problem."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config {path} is not valid TOML: {exc}") from None

    problems: list[str] = []
    for key in data:
        if key not in _TABLES:
            problems.append(f"[{key}] is not a known table (known: {', '.join(_TABLES)})")

    def section(key: str) -> dict[str, Any]:
        return _table(f"[{key}]", data.get(key, {}), problems) or {}

    given = _read("[paths]", section("paths"), _path_specs(), problems)
    paths: dict[str, Path] = {}
    for f in fields(Config):
        if "paths_default" in f.metadata:
            default = f.metadata["paths_default"]
            if f.name not in given and not default:
                continue  # derived below
            p = given.get(f.name, Path(default))
            paths[f.name] = p if p.is_absolute() else path.parent / p
    paths.setdefault("audit_key_file", paths["secrets_file"].parent / "audit.key")
    if paths["audit_key_file"].resolve().is_relative_to(paths["audit_dir"].resolve()):
        problems.append("[paths].audit_key_file must not be inside audit_dir (whoever can "
                        "write the logs must not read the key that signs them)")

    proxy = _build(ProxySettings, "[proxy]", section("proxy"), problems)
    accounting = _build(AccountingSettings, "[accounting]", section("accounting"), problems)
    if proxy is not None and proxy.inflight_bytes < proxy.max_request_bytes:
        problems.append(f"[proxy].inflight_bytes ({proxy.inflight_bytes}) must be at least "
                        f"max_request_bytes ({proxy.max_request_bytes})")
    if isinstance(data.get("proxy"), dict):
        problems += audit_space_problems(data["proxy"])

    upstream_tables = section("upstreams")
    upstreams: dict[str, UpstreamSettings] = {}
    for name, value in upstream_tables.items():
        # the table's kind picks the fields it is checked against (an unknown kind is
        # reported by the base table's rule, with the base's other problems)
        kind = value.get("kind", "ibm-runtime") if isinstance(value, dict) else None
        cls = UPSTREAM_KINDS.get(kind, UpstreamSettings) if isinstance(kind, str) else \
            UpstreamSettings
        if cls is UpstreamSettings and isinstance(value, dict):
            value = {k: v for k, v in value.items() if k in _BASE_UPSTREAM_FIELDS}
        up = _build(cls, f"[upstreams.{name}]", value, problems, name=name)
        if up is not None:
            upstreams[name] = up

    resources: dict[str, Resource] = {}
    for name, value in section("resources").items():
        where = f"[resources.{name}]"
        if (res := _build(Resource, where, value, problems, name=name)) is not None:
            resources[name] = res
        # Checked on the raw table so it is reported along with the table's other problems;
        # an [upstreams.*] table that is itself invalid still counts as defined here.
        upstream = value.get("upstream") if isinstance(value, dict) else None
        if isinstance(upstream, str) and upstream not in upstream_tables:
            defined = ", ".join(upstream_tables) or "none"
            problems.append(
                f"{where}.upstream {_show(upstream)} is not defined in [upstreams]"
                f" (defined: {defined})"
            )

    if problems or proxy is None or accounting is None:
        count = f"{len(problems)} problem" + ("s" if len(problems) != 1 else "")
        raise ConfigError("\n  ".join([f"config {path} has {count}:", *problems]))
    return Config(path=path, proxy=proxy, upstreams=upstreams, resources=resources,
                  accounting=accounting, **paths)
