"""``qproxy usage``: QPU seconds, upstream jobs and lane-hours held vs used, per user /
account / resource / day over a period, from the nodes' usage files joined with Slurm
accounting (sacct) where it answers. Table (default), ``--csv`` or ``--json``; ``--plot``
draws QPU time per account and lane utilisation. How lines are merged:
``qproxy.admin.usagereport``."""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

from qproxy.admin import usagereport as ur


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="qproxy usage", description=__doc__.split("\n")[0])
    p.add_argument("paths", nargs="*", type=Path,
                   help="usage.jsonl files, or directories holding them (one per node); "
                        "default: {audit_dir}/usage.jsonl of --config")
    p.add_argument("--config", help="admin config (default /etc/qproxy/qproxy.toml)")
    p.add_argument("--since", help="period start: 2026-12-01, 2026-12-01T13:00 (UTC) or epoch")
    p.add_argument("--until", help="period end (exclusive)")
    p.add_argument("--by", default="user",
                   help=f"comma-separated grouping of {', '.join(ur.GROUPS)} (default user)")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--csv", action="store_true")
    fmt.add_argument("--json", action="store_true")
    p.add_argument("--plot", type=Path, metavar="FILE.png")
    p.add_argument("--bucket", default="day", choices=["minute", "hour", "day"],
                   help="time bucket of the plot (default day)")
    p.add_argument("--no-sacct", action="store_true", help="do not ask Slurm accounting")
    return p


def _fail(message: str) -> int:
    print(f"qproxy usage: {message}", file=sys.stderr)
    return 2


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    by = tuple(b.strip() for b in args.by.split(",") if b.strip())
    if not by or any(b not in ur.GROUPS for b in by):
        return _fail(f"--by takes {', '.join(ur.GROUPS)}, not {args.by!r}")
    try:
        since = ur.parse_time(args.since) if args.since else None
        until = ur.parse_time(args.until) if args.until else None
    except ValueError as exc:
        return _fail(str(exc))
    paths = list(args.paths)
    if not paths:
        from qproxy.config import DEFAULT_CONFIG_PATH, ConfigError, load

        try:
            paths = [load(args.config or DEFAULT_CONFIG_PATH).audit_dir / "usage.jsonl"]
        except ConfigError as exc:
            return _fail(f"no usage files given and the config cannot be read: {exc}")
    try:
        loaded = ur.load(paths)
    except OSError as exc:
        return _fail(f"{exc.filename or exc}: {exc.strerror or exc}")
    acct = None
    if not args.no_sacct:
        from qproxy.slurmcli.sacct import sacct_jobs

        acct = sacct_jobs([r.job_id for r in loaded.records])
    job_runs = [r for r in ur.runs(loaded.records, acct) if ur.in_period(r, since, until)]
    rows, total = ur.aggregate(job_runs, by)
    plotted = None
    if args.plot:
        try:
            from qproxy.admin.usageplot import plot
        except ImportError:
            return _fail("--plot needs matplotlib (pip install 'qproxy[plot]')")
        try:
            plotted = plot(job_runs, args.plot, args.bucket)
        except OSError as exc:
            return _fail(f"cannot write {args.plot}: {exc.strerror or exc}")
    sacct = "off" if args.no_sacct else "unavailable" if acct is None else "joined"
    if args.json:
        doc = {"period": {"since": since, "until": until}, "by": list(by), "sacct": sacct,
               "files": loaded.files, "duplicate_lines": loaded.duplicates,
               "bad_lines": loaded.bad_lines,
               "rows": [r.as_dict(by) for r in rows], "total": total.as_dict(()),
               "runs": [_run_dict(r) for r in job_runs]}
        if plotted is not None:
            doc["plot"] = {"file": str(args.plot), **plotted.as_dict()}
        print(json.dumps(doc, indent=1))
    elif args.csv:
        print(_csv(rows, by), end="")
    else:
        print(_table(rows, total, by))
        notes = [f"{len(loaded.files)} file(s)", f"sacct {sacct}"]
        if loaded.duplicates:
            notes.append(f"{loaded.duplicates} duplicate line(s) counted once")
        if loaded.bad_lines:
            notes.append(f"{loaded.bad_lines} unreadable line(s) skipped")
        if incomplete := sum(1 for r in job_runs if not r.complete):
            notes.append(f"{incomplete} run(s) without their primary's line")
        if plotted is not None:
            notes.append(f"plot: {args.plot}")
        print("(" + "; ".join(notes) + ")")
    return 0


COLUMNS = ("jobs", "upstream_jobs", "qpu_seconds", "lane_hours", "idle_share")


def _csv(rows: list[ur.Row], by: tuple[str, ...]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=[*by, *COLUMNS], lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({k: "" if v is None else v for k, v in row.as_dict(by).items()})
    return buf.getvalue()


def _cells(d: dict[str, object], by: tuple[str, ...]) -> list[str]:
    idle = d["idle_share"]
    return [*(str(d.get(b, "")) for b in by), str(d["jobs"]), str(d["upstream_jobs"]),
            f"{d['qpu_seconds']:.3f}", f"{d['lane_hours']:.4f}",
            "-" if idle is None else f"{100 * float(idle):.1f}%"]  # type: ignore[arg-type]


def _table(rows: list[ur.Row], total: ur.Row, by: tuple[str, ...]) -> str:
    head = [*by, "jobs", "upstream_jobs", "qpu_s", "lane_h", "idle"]
    body = [_cells(r.as_dict(by), by) for r in rows]
    foot = _cells({**{b: "" for b in by}, **total.as_dict(())}, by)
    foot[0] = "TOTAL"
    width = [max(len(c[i]) for c in [head, *body, foot]) for i in range(len(head))]
    n = len(by)

    def fmt(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i < n else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, width, strict=True))).rstrip()

    rule = "  ".join("-" * w for w in width)
    return "\n".join([fmt(head), rule, *map(fmt, body), rule, fmt(foot)])


def _run_dict(r: ur.JobRun) -> dict[str, object]:
    return {"job_id": r.job_id, "user": r.user, "account": r.account, "resource": r.resource,
            "start": r.start, "end": r.end, "lanes": r.lanes, "qpu_seconds": r.qpu_seconds,
            "upstream_jobs": r.upstream_jobs, "nodes": r.nodes, "lane_seconds": r.lane_seconds,
            "elapsed_from": r.elapsed_from, "complete": r.complete}
