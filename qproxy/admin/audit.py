"""`qproxy audit verify FILE [--summary SUMMARY.json] [--config C | --key-file K]
[--allow-open]`: check an audit log's HMAC chain and that it ends with a final record.
`qproxy audit verify-usage [FILE] [--config C | --key-file K]`: check usage.jsonl's chain
(default: the one in ``[paths].audit_dir``) and that it agrees with the audit logs beside it.
`qproxy audit space --config C [--rescan]`: this node's audit space, per user held and the
share left (the ledger of qproxy.node.auditbudget; ``--rescan`` rebuilds it from audit_dir
first, e.g. after archiving logs).

The key comes from ``--key-file``, else ``[paths].audit_key_file`` of ``--config``, else the
key file the log's first record names -- accepted only if it is a root-owned 0600 file (a
forger can name a key of their own, never one only root reads). ``--allow-open`` accepts a
log without its final ``close`` record (a proxy that is still running).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import orjson

from qproxy.node import usagelog
from qproxy.node.audit import AuditKeyError, load_key, verify


def _key(args: argparse.Namespace) -> tuple[bytes | None, Path | None]:
    """(key, audit_dir of --config); raises ValueError with the one-line reason."""
    key_file, audit_dir = args.key_file, None
    if args.config is not None:
        from qproxy.config import ConfigError, load

        try:
            conf = load(args.config)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        key_file = key_file or conf.audit_key_file
        audit_dir = conf.audit_dir
    try:
        return (load_key(key_file) if key_file is not None else None), audit_dir
    except AuditKeyError as exc:
        raise ValueError(str(exc)) from None


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="qproxy audit", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("verify", help="verify a per-job audit log (exit 0 ok, 1 broken)")
    v.add_argument("file", type=Path)
    v.add_argument("--summary", type=Path, help="summary.json holding the expected last hash")
    v.add_argument("--allow-open", action="store_true",
                   help="accept a log without its final record (its proxy still runs)")
    u = sub.add_parser("verify-usage", help="verify usage.jsonl against the audit logs")
    u.add_argument("file", type=Path, nargs="?",
                   help="default: usage.jsonl in [paths].audit_dir of --config")
    for p in (v, u):
        p.add_argument("--key-file", type=Path, help="the audit HMAC key")
        p.add_argument("--config", type=Path, help="admin config naming [paths].audit_key_file")
    sp = sub.add_parser("space", help="this node's audit space per user")
    sp.add_argument("--config", type=Path, default=None)
    sp.add_argument("--rescan", action="store_true", help="rebuild the ledger from audit_dir")
    args = parser.parse_args(argv)
    if args.cmd == "space":
        return _space(args.config, args.rescan)
    try:
        key, audit_dir = _key(args)
    except ValueError as exc:
        print(f"qproxy audit: {exc}", file=sys.stderr)
        return 2
    if args.cmd == "verify-usage":
        return _verify_usage(args.file or (audit_dir / usagelog.FILE_NAME if audit_dir
                                           else None), key)
    head = None
    if args.summary:
        try:
            head = orjson.loads(args.summary.read_bytes()).get("audit_head")
        except (OSError, orjson.JSONDecodeError, AttributeError) as exc:
            print(f"qproxy audit: cannot read summary {args.summary}: {exc}", file=sys.stderr)
            return 2
    ok, line, msg = verify(args.file, head, key, require_final=not args.allow_open)
    if ok:
        print(f"{args.file}: {msg}")
        return 0
    print(f"{args.file}:{line}: {msg}", file=sys.stderr)
    return 1


def _verify_usage(path: Path | None, key: bytes | None) -> int:
    if path is None:
        print("qproxy audit: verify-usage needs FILE or --config", file=sys.stderr)
        return 2
    if key is None:
        print("qproxy audit: verify-usage needs the audit key (--key-file or --config)",
              file=sys.stderr)
        return 2
    count, problems = usagelog.verify(path, key)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        return 1
    print(f"{path}: ok: {count} usage lines, HMAC chain, each matches its audit log")
    return 0


def _space(config: Path | None, rescan: bool) -> int:
    from qproxy.config import DEFAULT_CONFIG_PATH, ConfigError, load
    from qproxy.node.auditbudget import NODE, NodeBudget

    try:
        conf = load(config or DEFAULT_CONFIG_PATH)
    except ConfigError as exc:
        print(f"qproxy audit: {exc}", file=sys.stderr)
        return 2
    px = conf.proxy
    budget = NodeBudget(conf.state_dir, conf.audit_dir, px.audit_node_max_bytes,
                        px.audit_user_max_bytes)
    led = budget.usage(rescan=rescan)
    users: dict[str, int] = led["users"]

    def limit(n: int) -> str:
        return str(n) if n else "no limit"

    print(f"node: {sum(users.values())} bytes held of {limit(budget.node_max)}; "
          f"{len(led['writers'])} logs being written")
    for user, held in sorted(users.items(), key=lambda kv: -kv[1]):
        share = "" if user == NODE else f" of {limit(budget.user_max)}"
        print(f"  {user or '(no user: usage.jsonl, proxy logs, other files)'}: {held}{share}")
    return 0
