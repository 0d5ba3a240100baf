"""`qproxy audit verify FILE [--summary SUMMARY.json] [--config C | --key-file K]
[--allow-open]`: check an audit log's HMAC chain and that it ends with a final record.

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

from qproxy.proxy.audit import AuditKeyError, load_key, verify


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="qproxy audit", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("verify", help="verify a per-job audit log (exit 0 ok, 1 broken)")
    v.add_argument("file", type=Path)
    v.add_argument("--summary", type=Path, help="summary.json holding the expected last hash")
    v.add_argument("--key-file", type=Path, help="the audit HMAC key")
    v.add_argument("--config", type=Path, help="admin config naming [paths].audit_key_file")
    v.add_argument("--allow-open", action="store_true",
                   help="accept a log without its final record (its proxy still runs)")
    args = parser.parse_args(argv)
    head = None
    if args.summary:
        try:
            head = orjson.loads(args.summary.read_bytes()).get("audit_head")
        except (OSError, orjson.JSONDecodeError, AttributeError) as exc:
            print(f"qproxy audit: cannot read summary {args.summary}: {exc}", file=sys.stderr)
            return 2
    key_file = args.key_file
    if key_file is None and args.config is not None:
        from qproxy.config import ConfigError, load

        try:
            key_file = load(args.config).audit_key_file
        except ConfigError as exc:
            print(f"qproxy audit: {exc}", file=sys.stderr)
            return 2
    try:
        key = load_key(key_file) if key_file is not None else None
    except AuditKeyError as exc:
        print(f"qproxy audit: {exc}", file=sys.stderr)
        return 2
    ok, line, msg = verify(args.file, head, key, require_final=not args.allow_open)
    if ok:
        print(f"{args.file}: {msg}")
        return 0
    print(f"{args.file}:{line}: {msg}", file=sys.stderr)
    return 1
