"""`make bench`: every cost as a ratio against its baseline, measured in this run.

Prints a table and writes bench/results/latest.json. Sections can be picked with
`python -m bench.run --only 1,2,5`; `--quick` shortens rounds (for a smoke run).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import common

RESULTS = common.REPO / "bench" / "results" / "latest.json"


def machine() -> dict[str, Any]:
    mem_kb = 0
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    return {
        "cpus": os.cpu_count(), "mem_gb": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(), "platform": platform.platform(),
    }


def fmt_row(row: dict[str, Any]) -> str:
    keys = [k for k in row if k not in ("bench", "target", "ok")]
    figures = ", ".join(f"{k}={row[k]}" for k in keys)
    verdict = "ok" if row.get("ok") else "MISSED"
    return f"{row['bench']:<34} {figures}  [{row.get('target', '')}: {verdict}]"


def bell_params() -> dict[str, Any]:
    """Sampler params for a small ISA Bell circuit, in the client's own JSON encoding."""
    from qiskit import QuantumCircuit, transpile
    from qiskit_ibm_runtime.fake_provider import FakeFez
    from qiskit_ibm_runtime.utils.json import RuntimeEncoder

    qc = QuantumCircuit(2)
    qc.h(0)
    qc.cx(0, 1)
    qc.measure_all()
    isa = transpile(qc, FakeFez(), optimization_level=1, seed_transpiler=1)
    params = {"pubs": [(isa, None, 100)], "version": 2, "support_qiskit": True, "options": {}}
    return dict(json.loads(json.dumps(params, cls=RuntimeEncoder)))


def markdown(report: dict[str, Any]) -> str:
    """The README's table: one line a measurement, figures as measured, verdict last."""
    m = report["machine"]
    lines = [
        f"Measured {report['date'][:10]} on {m['cpus']} cores, {m['mem_gb']} GB "
        f"(Python {m['python']}){' — quick mode' if report['quick'] else ''}.",
        "",
        "| benchmark | figures (baseline → subject) | ratio | target | met |",
        "|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        if "error" in row:
            last = (str(row["error"]).strip().splitlines() or [""])[-1]  # one table row
            lines.append(f"| {row['bench']} | error: {last} | | | no |")
            continue
        figs = ", ".join(
            f"{k}={v}" for k, v in row.items() if k not in ("bench", "target", "ok", "ratio")
        )
        lines.append(
            f"| {row['bench']} | {figs} | {row.get('ratio', '')} | {row.get('target', '')} "
            f"| {'yes' if row.get('ok') else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def section_requests(work: Path, quick: bool) -> list[dict[str, Any]]:
    from bench import requests_bench as rb

    rounds, n, secs = (3, 50, 1.0) if quick else (7, 200, 2.0)
    with common.emulator(work, "--backends", "fake_fez", "--lanes", "2") as emu:
        cfg = common.write_config(work, emu)
        with common.proxy(cfg, work) as px:
            os.sched_setaffinity(px.proc.pid, {0})  # "one proxy on one core"

            async def targets() -> tuple[rb.Target, rb.Target]:
                d = await rb.Target(emu.url, emu.api_key, emu.instance).__aenter__()
                p = await rb.Target(px.url, px.token, px.env["QISKIT_IBM_INSTANCE"]).__aenter__()
                return d, p

            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            direct, proxied = loop.run_until_complete(targets())
            # a job of this proxy's, so "job status" is a real job lookup on both paths
            job = loop.run_until_complete(proxied.post_json("/jobs", {
                "program_id": "sampler", "backend": "ibm_fez", "params": bell_params(),
            }))
            jid = job["id"]
            rows = rb.run_latency(direct, proxied, {
                "GET /backends": ("/backends", "/backends"),
                "GET /jobs/{id}": (f"/jobs/{jid}", f"/jobs/{jid}"),
            }, rounds, n)
            rows.extend(rb.run_throughput(direct, proxied, f"/jobs/{jid}", f"/jobs/{jid}",
                                          32, secs, rounds, (emu.proc.pid, px.proc.pid)))
            loop.run_until_complete(direct.__aexit__())
            loop.run_until_complete(proxied.__aexit__())
            loop.close()
    return rows


def section_bodies(work: Path, quick: bool) -> list[dict[str, Any]]:
    from bench import bodies
    from bench import requests_bench as rb

    with common.emulator(work, "--backends", "fake_fez", "--lanes", "2", "--diagnostics") as emu:
        cfg = common.write_config(work, emu)
        with common.proxy(cfg, work) as px:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            direct = loop.run_until_complete(
                rb.Target(emu.url, emu.api_key, emu.instance).__aenter__())
            proxied = loop.run_until_complete(
                rb.Target(px.url, px.token, px.env["QISKIT_IBM_INSTANCE"]).__aenter__())
            try:
                return bodies.run(direct, proxied, px.proc.pid, 3 if quick else 5)
            finally:
                loop.run_until_complete(direct.__aexit__())
                loop.run_until_complete(proxied.__aexit__())
                loop.close()


def section_e2e(work: Path, quick: bool) -> list[dict[str, Any]]:
    from bench import primitives_bench as pb

    with common.emulator(work, "--backends", "fake_fez", "--lanes", "2") as emu:
        cfg = common.write_config(work, emu)
        with common.proxy(cfg, work) as px:
            return pb.run_e2e(emu.env(), px.env, "fake_fez", "ibm_fez", 3 if quick else 5)


def section_footprint(work: Path, quick: bool) -> list[dict[str, Any]]:
    from bench import footprint

    with common.emulator(work, "--backends", "fake_fez") as emu:
        cfg = common.write_config(work, emu)
        rows = footprint.run(cfg, work, 3 if quick else 7)
        return rows + footprint.run_node(cfg, work, 16 if quick else 64)


def section_emulator(work: Path, quick: bool) -> list[dict[str, Any]]:
    from bench import primitives_bench as pb

    rows = []
    with common.emulator(work, "--backends", "fake_fez", "--lanes", "1") as one, \
            common.emulator(work, "--backends", "fake_fez", "--lanes", "2") as two:
        rows.append(pb.run_emulator_vs_aer(one.env(), 2 if quick else 3))
        t1, t2 = common.alternate(
            lambda: pb.lane_throughput(one.env()), lambda: pb.lane_throughput(two.env()),
            2 if quick else 3,
        )
    ratio = common.median(t2) / common.median(t1)
    rows.append({
        "bench": "7. emulator lanes 2 vs 1",
        "baseline_jobs_per_s": round(common.median(t1), 3),
        "subject_jobs_per_s": round(common.median(t2), 3),
        "ratio": round(ratio, 3), "target": ">= 1.7x", "ok": ratio >= 1.7,
    })
    return rows


def section_slurm_mode(work: Path, quick: bool) -> list[dict[str, Any]]:
    from bench import slurm_mode

    return slurm_mode.run(work, quick)


def section_slurm(work: Path, quick: bool) -> list[dict[str, Any]]:
    from bench import slurm_bench

    return slurm_bench.run(work, quick)


def section_hostile(work: Path, quick: bool) -> list[dict[str, Any]]:
    from bench import hostile_bench

    return hostile_bench.run(work, quick)


def section_load(work: Path, quick: bool) -> list[dict[str, Any]]:
    from bench import load_bench

    return load_bench.run(work, quick)


def section_quantum_system(work: Path, quick: bool) -> list[dict[str, Any]]:
    from bench import quantum_system_bench as qb
    from bench import requests_bench as rb
    from qproxy.emulator import s3local
    from qproxy.upstream.s3 import ObjectStore

    with s3local.running(work / "s3") as s3, common.emulator(
            work, "--backends", "fake_fez", "--lanes", "2", "--diagnostics",
            "--api", "both") as emu:
        cfg = qb.write_config(work, emu, s3)
        with common.proxy(cfg, work) as px:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            store = ObjectStore(s3.endpoint, s3.bucket, s3.region, s3.access_key_id,
                                s3.secret_access_key)
            direct = qb.Direct(emu.url, emu.api_key, emu.instance, store)
            proxied = loop.run_until_complete(
                rb.Target(px.url, px.token, px.env["QISKIT_IBM_INSTANCE"]).__aenter__())
            try:
                return qb.run(direct, proxied, px.proc.pid, bell_params(), "fake_fez",
                              "ibm_fez", 3 if quick else 7)
            finally:
                loop.run_until_complete(direct.close())
                loop.run_until_complete(proxied.__aexit__())
                loop.close()


SECTIONS: dict[str, Callable[[Path, bool], list[dict[str, Any]]]] = {
    "1": section_requests,  # also 2
    "3": section_e2e,
    "4": section_bodies,
    "5": section_footprint,
    "6": section_slurm,
    "7": section_emulator,
    "8": section_slurm_mode,  # issue 6: primitive calls as their own Slurm jobs
    "9": section_hostile,  # a hostile neighbour: audit bytes, peak RSS, victim p99
    "10": section_load,  # a node under load: 64 and 256 QPU jobs at once, 4 lanes
    "11": section_quantum_system,  # issue 25: the on-prem kind vs its API called directly
}


def _run_sections(wanted: list[str], quick: bool, rows: list[dict[str, Any]],
                  failed: list[str]) -> None:
    with tempfile.TemporaryDirectory(prefix="qproxy-bench-") as tmp:
        work = Path(tmp)
        for key in wanted:
            try:
                got = SECTIONS[key](work, quick)
            except Exception as exc:  # a broken section must not hide the others' figures
                traceback.print_exc()
                failed.append(key)
                got = [{"bench": f"section {key}", "error": str(exc), "ok": False}]
            for row in got:
                err = row.get("error")
                line = f"{row['bench']}: ERROR {err}" if err else fmt_row(row)
                print(line, flush=True)
            rows.extend(got)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench")
    ap.add_argument("--only", default="", help="comma-separated section numbers")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--output", type=Path, default=None,
                    help=f"default {RESULTS.name}; with --only, partial.json (so a partial run "
                    "never replaces the full table the README quotes)")
    args = ap.parse_args(argv)
    wanted = [s for s in args.only.split(",") if s] or list(SECTIONS)
    if args.output is None:
        args.output = RESULTS.with_name("partial.json") if args.only else RESULTS
    unknown = [k for k in wanted if k not in SECTIONS]
    if unknown:
        print(f"bench: unknown section {unknown[0]!r}", file=sys.stderr)
        return 2
    rows: list[dict[str, Any]] = []
    failed: list[str] = []
    from tests.support.cluster import cluster_cmd

    # sections 6 and 8 bring the local cluster up; one this run started is stopped at the end
    was_up = cluster_cmd("status", stdout=subprocess.DEVNULL).returncode == 0
    try:
        _run_sections(wanted, args.quick, rows, failed)
    finally:
        if not was_up and not os.environ.get("QPROXY_KEEP_CLUSTER"):
            cluster_cmd("down", stdout=subprocess.DEVNULL)
    report = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(), "quick": args.quick, "rows": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    args.output.with_suffix(".md").write_text(markdown(report))
    print(f"wrote {args.output} and {args.output.with_suffix('.md').name}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
