"""`qproxy audit verify FILE [--summary SUMMARY.json]`: check an audit log's hash chain."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import orjson

from qproxy.proxy.audit import verify


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="qproxy audit", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("verify", help="verify a per-job audit log (exit 0 ok, 1 broken)")
    v.add_argument("file", type=Path)
    v.add_argument("--summary", type=Path, help="summary.json holding the expected last hash")
    args = parser.parse_args(argv)
    head = None
    if args.summary:
        try:
            head = orjson.loads(args.summary.read_bytes()).get("audit_head")
        except (OSError, orjson.JSONDecodeError, AttributeError) as exc:
            print(f"qproxy audit: cannot read summary {args.summary}: {exc}", file=sys.stderr)
            return 2
    ok, line, msg = verify(args.file, head)
    if ok:
        print(f"{args.file}: {msg}")
        return 0
    print(f"{args.file}:{line}: {msg}", file=sys.stderr)
    return 1
