"""`qproxy audit verify FILE [--summary SUMMARY.json] [--config C | --key-file K]
[--allow-open]`: check an audit log's HMAC chain and that it ends with a final record.
`qproxy audit verify-usage [FILE] [--config C | --key-file K]`: check usage.jsonl's chain
(default: the one in ``[paths].audit_dir``) and that it agrees with the audit logs beside it.

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
    args = parser.parse_args(argv)
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
