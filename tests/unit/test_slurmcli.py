"""The Slurm output parsers (qproxy/slurmcli/: parse, record) on the shapes each Slurm version
prints: 22.05 (bookworm), 24.11 (trixie, data_parser v0.0.42) and 26.05 (sid). Captured
outputs of real clusters live in tests/data/slurm/<version>/ and are parsed here too."""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path
from typing import Any

import pytest

from qproxy.slurmcli import parse, states
from qproxy.slurmcli.parse import (
    exit_code,
    gres_lanes,
    gres_qpu,
    number,
    parse_licenses,
    state_word,
)
from qproxy.slurmcli.record import record_from_json, record_from_text

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "slurm"


def _n(value: float, infinite: bool = False, set_: bool = True) -> dict[str, Any]:
    return {"set": set_, "infinite": infinite, "number": value}


JOB_2205: dict[str, Any] = {
    "job_id": 42, "job_state": "RUNNING", "user_name": "alice", "user_id": 1001,
    "account": "physics", "end_time": 1764590000, "start_time": 1764586400,
    "licenses": "ibm_fez:2", "gres_detail": [], "tres_per_node": "", "state_reason": "None",
}
JOB_2411: dict[str, Any] = {
    "job_id": 42, "job_state": ["RUNNING"], "user_name": "alice", "user_id": 1001,
    "account": "physics", "end_time": _n(1764590000), "start_time": _n(1764586400),
    "time_limit": _n(60), "licenses": "", "gres_detail": ["qpu:1(IDX:0)"],
    "tres_per_node": "gres/qpu:1", "state_reason": "None",
    "exit_code": {"status": ["SUCCESS"], "return_code": _n(0),
                  "signal": {"id": _n(0, set_=False), "name": ""}},
}


@pytest.mark.parametrize(("value", "expected"), [
    (5, 5.0), (2.5, 2.5), (_n(7), 7.0), (_n(0, set_=False), None), (_n(0, infinite=True), math.inf),
    (None, None), ("3", None), (True, None),
])
def test_number(value: Any, expected: float | None) -> None:
    assert number(value) == expected


@pytest.mark.parametrize(("value", "expected"), [
    ("RUNNING", "RUNNING"), (["RUNNING", "COMPLETING"], "RUNNING"), ("CANCELLED by 0", "CANCELLED"),
    ([], ""), (None, ""), ("pending", "PENDING"),
])
def test_state_word(value: Any, expected: str) -> None:
    assert state_word(value) == expected


def test_exit_code_shapes() -> None:
    assert exit_code("0:0") == "0:0"
    assert exit_code(JOB_2411["exit_code"]) == "0:0"
    assert exit_code({"return_code": _n(3), "signal": {"id": _n(9)}}) == "3:9"
    assert exit_code({"return_code": _n(0, set_=False)}) == ""
    assert exit_code(None) == ""


@pytest.mark.parametrize(("text", "lanes"), [
    ("gres:qpu:2", 2), ("gres/qpu:1", 1), ("gres/qpu=3", 3), ("qpu(CNT:2)", 2),
    ("qpu:2(IDX:0-1)", 2), ("gres:qpu:fez:4", 4), ("cpu=1,mem=1G,gres/qpu=2", 2),
    ("gres:gpu:2", 0), ("", 0), ("(null)", 0),
])
def test_gres_qpu(text: str, lanes: int) -> None:
    assert gres_qpu(text) == lanes


def test_parse_licenses_null_and_counts() -> None:
    assert parse_licenses("(null)") == {}
    assert parse_licenses("ibm_fez:2,ibm_torino") == {"ibm_fez": 2, "ibm_torino": 1}
    assert parse_licenses("ibm_fez:x") == {}


@pytest.mark.parametrize("job", [JOB_2205, JOB_2411], ids=["22.05", "24.11"])
def test_record_from_json_any_version(job: dict[str, Any]) -> None:
    rec = record_from_json(job)
    assert (rec.job_id, rec.state, rec.user, rec.user_id, rec.account) == (
        "42", "RUNNING", "alice", 1001, "physics")
    assert rec.end_time == 1764590000.0
    assert rec.licenses == ({"ibm_fez": 2} if job is JOB_2205 else {})
    assert rec.gres_qpu == (0 if job is JOB_2205 else 1)


def test_unlimited_end_time_is_none() -> None:
    rec = record_from_json({**JOB_2411, "end_time": _n(0, infinite=True)})
    assert rec.end_time == 0.0


def test_gres_detail_wins_over_request() -> None:
    assert gres_lanes({"gres_detail": ["qpu(CNT:2)"], "tres_per_node": "gres/qpu:1"}) == 2


@pytest.mark.parametrize(("line", "tres"), [
    ("TresPerNode=gres:qpu:1", "22.05"), ("TresPerNode=gres/qpu:1", "24.11"),
])
def test_record_from_text(line: str, tres: str) -> None:
    text = (f"JobId=7 JobName=x UserId=alice(1001) GroupId=alice(1001) Account=physics "
            f"JobState=RUNNING Reason=None ExitCode=0:0 Licenses=(null) {line} "
            "AdminComment=qpu backend=ibm_fez lanes=1 Comment=x")
    rec = record_from_text("7", text)
    assert (rec.user, rec.user_id, rec.account, rec.state, rec.gres_qpu) == (
        "alice", 1001, "physics", "RUNNING", 1), tres
    assert rec.licenses == {} and rec.admin_comment == "qpu backend=ibm_fez lanes=1"


VERSIONS = sorted(p.name for p in DATA.iterdir() if p.is_dir()) if DATA.is_dir() else []
# What each captured job is (tests/data/slurm/capture): its state, QPU GRES and licences.
EXPECTED = {
    "running-gres": ("RUNNING", 1, {}),
    "running-lic": ("RUNNING", 0, {"ibm_fez": 1}),
    "finished-qpu": (None, 1, {}),  # COMPLETED on 22.05; FAILED where the old prolog broke
    "finished-plain": ("COMPLETED", 0, {}),
}


def _job_ids(version: str) -> dict[str, str]:
    """``# jobs: plain=7 finished-qpu=8 ...`` from the capture's commands.txt."""
    head = (DATA / version / "commands.txt").read_text().splitlines()[0]
    ids = dict(item.split("=") for item in head.removeprefix("# jobs:").split())
    return {("finished-plain" if k == "plain" else k): v for k, v in ids.items()}


def test_captures_cover_the_three_majors() -> None:
    assert {v.rsplit(".", 1)[0] for v in VERSIONS} >= {"22.05", "24.11", "26.05"}, VERSIONS


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_captured_job(version: str, kind: str) -> None:
    """Each real capture parses to the job it was: from squeue --json --states all, from
    scontrol --json where the version has it, and from scontrol -o text."""
    d = DATA / version
    job_id = _job_ids(version)[kind]
    state, gres, licenses = EXPECTED[kind]
    sources = [json.loads((d / f"squeue-json-states-all-jobs-{kind}.json").read_text())]
    scontrol_json = (d / f"scontrol-json-show-job-{kind}.json").read_text()
    if version.startswith("22.05"):
        assert not scontrol_json.strip(), "22.05 has no scontrol --json"
    else:
        sources.append(json.loads(scontrol_json))
    recs = [record_from_json(j) for doc in sources for j in parse.jobs_of(doc)
            if str(j.get("job_id")) == job_id]
    line = (d / f"scontrol-o-show-job-{kind}.txt").read_text().splitlines()[0]
    recs.append(record_from_text(job_id, line))
    assert len(recs) == len(sources) + 1
    for rec in recs:
        assert rec.state == state if state else rec.state in states.FINAL_STATES, rec
        assert (rec.user, rec.user_id) == ("qpuuser", 1001), rec
        assert rec.account == ""
        assert (rec.gres_qpu, rec.licenses) == (gres, licenses), (rec.source, rec)
        assert rec.exit_code.count(":") == 1, rec.exit_code
        if rec.source == "json":
            assert rec.end_time > 1.7e9


@pytest.mark.parametrize("version", VERSIONS)
def test_finished_jobs_need_states_all_from_24_11(version: str) -> None:
    """Why live_job_ids/job_info only ever look for live jobs: 24.11+ leave finished jobs
    out of ``squeue --json --jobs N`` unless ``--states all`` is given (22.05 lists all)."""
    job_id = _job_ids(version)["finished-plain"]
    doc = json.loads((DATA / version / "squeue-json-jobs-finished-plain.json").read_text())
    listed = [j for j in parse.jobs_of(doc) if str(j.get("job_id")) == job_id]
    assert bool(listed) == version.startswith("22.05")


def _qproxy_imports(path: Path) -> set[str]:
    """The ``qproxy...`` modules a file imports (at any depth, type-checking ones included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return {m for m in found if m == "qproxy" or m.startswith("qproxy.")}


def test_job_side_reads_slurm_without_the_root_hooks() -> None:
    """qproxy/slurmcli is the bottom layer (stdlib, the stdlib-only qproxy.files and itself
    only), and job-side code
    (qproxy/client, qiskit_slurm_provider) imports nothing of the root hooks' qproxy.slurm."""
    for path in (ROOT / "qproxy" / "slurmcli").glob("*.py"):
        outside = {m for m in _qproxy_imports(path)
                   if not m.startswith(("qproxy.slurmcli", "qproxy.files"))}
        assert not outside, (path.name, outside)
    job_side = [*(ROOT / "qproxy" / "client").rglob("*.py"),
                *(ROOT / "qiskit_slurm_provider").rglob("*.py")]
    assert job_side
    for path in job_side:
        hooks = {m for m in _qproxy_imports(path)
                 if m == "qproxy.slurm" or m.startswith("qproxy.slurm.")}
        assert not hooks, (path, hooks)
