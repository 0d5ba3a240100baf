"""The node-level series ``qproxy metrics`` adds to the proxies' (docs/operations.md,
Metrics): ``qproxy_reapable`` from real state files and real processes, and
``qproxy_usage_unbooked_total`` counted by a real epilog whose cleanup fails, folded once."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from qproxy import config as cfg
from qproxy.admin.metrics import PAST_END_SECONDS, collect
from qproxy.node.ledger import Ledger
from qproxy.node.metricsstore import unbooked
from qproxy.records import ProxyRecord
from qproxy.slurm import epilog
from qproxy.slurm.state import JobState
from tests.unit.test_metrics_merge import _config


def _values(conf: cfg.Config, name: str) -> dict[str, float]:
    out = {}
    for fam in text_string_to_metric_families(collect(conf).text().decode()):
        for s in fam.samples:
            if s.name == name:
                out[next(iter(s.labels.values()))] = s.value
    return out


def _sleeper(*args: str) -> subprocess.Popen[bytes]:
    """A real root process whose command line reads as `... serve --job-id N ...` (what
    qproxy.node.process recognises as a job's proxy)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "serve",
                             *args])
    deadline = time.time() + 10
    while b"serve" not in Path(f"/proc/{proc.pid}/cmdline").read_bytes():  # exec'd yet?
        assert time.time() < deadline
        time.sleep(0.01)
    return proc


def test_reapable_counts_each_kind(tmp_path: Path) -> None:
    conf = _config(tmp_path)
    assert _values(conf, "qproxy_reapable") == {
        "lease_without_job": 0, "record_without_process": 0, "process_without_record": 0,
        "past_end_time": 0}
    state = conf.state_dir
    # a lease whose job has no state here (job 4711), and one whose job has (job 12)
    (state / "leases.json").write_text(json.dumps({"ibm_fez": {"4711": 1, "12": 2}}))
    dead = subprocess.Popen(["true"])
    dead.wait()
    JobState.of(conf, "12").create()
    JobState.of(conf, "12").write_record(ProxyRecord(job_id="12", pid=dead.pid,
                                                     resource="ibm_fez"))
    late = _sleeper("--job-id", "13")
    orphan = _sleeper("--config", str(conf.path), "--job-id", "14")
    live = _sleeper("--job-id", "15")
    try:
        for job, proc, end in (("13", late, time.time() - PAST_END_SECONDS - 5),
                               ("15", live, time.time() + 60)):
            JobState.of(conf, job).create()
            JobState.of(conf, job).write_record(ProxyRecord(
                job_id=job, pid=proc.pid, resource="ibm_fez", end_time=end))
        assert _values(conf, "qproxy_reapable") == {
            "lease_without_job": 1, "record_without_process": 1,
            "process_without_record": 1, "past_end_time": 1}
    finally:
        for p in (late, orphan, live):
            p.kill()
            p.wait()


def test_unbooked_usage_is_counted_once(tmp_path: Path) -> None:
    conf = _config(tmp_path)
    assert _values(conf, "qproxy_usage_unbooked_total") == {"ibm_fez": 0, "ibm_torino": 0}
    # the epilog of a job whose proxy died, with an upstream job in its ledger: its cleanup
    # cannot read the vendor key (no secrets file), so the job's QPU seconds stay unbooked
    job = JobState.of(conf, "21")
    job.create()
    job.write_record(ProxyRecord(job_id="21", pid=999999, resource="ibm_fez", lanes=1))
    Ledger(job.ledger).append("job", "upstream-1")
    usage = epilog.finish(conf, "21", "epilog")
    assert usage.error and "cleanup failed" in usage.error
    unbooked(conf.state_dir, "22", "ibm_torino")
    want = {"ibm_fez": 1, "ibm_torino": 1}
    assert _values(conf, "qproxy_usage_unbooked_total") == want
    assert _values(conf, "qproxy_usage_unbooked_total") == want  # folded, not twice
    # a booked run adds nothing
    job = JobState.of(conf, "23")
    job.create()
    job.write_record(ProxyRecord(job_id="23", pid=999999, resource="ibm_fez", lanes=1))
    epilog.finish(conf, "23", "epilog")
    assert _values(conf, "qproxy_usage_unbooked_total") == want


def test_usage_names_the_prologs_account_without_sacct(tmp_path: Path,
                                                        capsys: object) -> None:
    """Issue 22's last point, checked end to end on files: the prolog's record carries the
    job's Slurm account, a real epilog books it into usage.jsonl, and `qproxy usage` names it
    with no sacct (a cluster without slurmdbd); only a job Slurm gave no account (no
    slurmdbd and no --account: squeue --json says "") stays "?"."""
    from qproxy.admin import usage as usage_cli
    from tests.unit.test_usagelog import _config as usage_config

    conf = usage_config(tmp_path)
    for job_id, account in (("31", "physics"), ("32", "")):
        job = JobState.of(conf, job_id)
        job.create()
        job.write_record(ProxyRecord(job_id=job_id, pid=999999, resource="ibm_fez", lanes=1,
                                     account=account, started=time.time() - 60))
        epilog.finish(conf, job_id, "epilog")
    assert usage_cli.main([str(conf.audit_dir), "--no-sacct", "--json", "--by",
                           "account"]) == 0
    doc = json.loads(capsys.readouterr().out)  # type: ignore[attr-defined]
    assert {r["job_id"]: r["account"] for r in doc["runs"]} == {"31": "physics", "32": "?"}
