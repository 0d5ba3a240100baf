"""Accounting with slurmdbd: licences keep jobs pending while CPUs are free, sacct shows the
licence allocation, sreport per account, GrpTRES per-account QPU limits, and what root can
add to a finished job's record."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.multinode.support import USER, USER2, MultiCluster

SLEEP = "sleep 60\n"


@pytest.fixture
def jobs(mn: MultiCluster) -> Iterator[list[str]]:
    """Job ids to scancel at the end of the test, pass or fail."""
    ids: list[str] = []
    yield ids
    mn.cancel(*ids)


def test_more_jobs_than_lanes_pend_on_licences(mn: MultiCluster, jobs: list[str]) -> None:
    """ibm_torino has one lane (Licenses=ibm_torino:1): the 2nd and 3rd job pend with
    reason Licenses while the nodes have idle CPUs."""
    for _ in range(3):
        job = mn.submit(SLEEP, "-p", "quantum", "-L", "ibm_torino:1",
                        "--q_backend=ibm_torino", "-o", "/dev/null", wait=False)
        jobs.append(job.id)
    mn.wait_state(jobs[0], {"RUNNING"}, timeout=60)
    mn.wait_state(jobs[2], {"PENDING"}, timeout=30, reason="Licenses")
    states = mn.squeue(*jobs)
    assert states[jobs[0]][0] == "RUNNING", states
    assert states[jobs[1]] == ("PENDING", "Licenses") and states[jobs[2]] == (
        "PENDING", "Licenses"), states
    idle = mn.exec("sinfo", "-h", "-p", "quantum", "-o", "%C").stdout.strip()  # A/I/O/T
    assert int(idle.split("/")[1]) >= 16, idle


def test_sacct_shows_licence_in_alloctres(mn: MultiCluster) -> None:
    job = mn.submit("true\n", "-p", "quantum", "-L", "ibm_fez:1", "--q_backend=ibm_fez",
                    "-w", "qnode1")
    assert job.state == "COMPLETED"
    row = mn.wait_sacct(job.id)
    assert row["Account"] == "physics" and "license/ibm_fez=1" in row["AllocTRES"], row
    gres = mn.submit("true\n", "-p", "quantum", "--gres=qpu:2", "--q_backend=ibm_fez",
                     "-A", "chemistry")
    row = mn.wait_sacct(gres.id)
    assert row["Account"] == "chemistry" and "gres/qpu=2" in row["AllocTRES"], row


def test_lane_seconds_per_account(mn: MultiCluster) -> None:
    """sreport reads slurmdbd's hourly rollups: a job appears only after the hour it ran in
    has been rolled up, so right after a job it prints the header and no row. The same
    figure is available at once from sacct: ElapsedRaw x the licence count in AllocTRES."""
    job = mn.submit("sleep 2\n", "-p", "quantum", "-L", "ibm_fez:1", "--q_backend=ibm_fez",
                    "-A", "chemistry")
    assert job.state == "COMPLETED"
    mn.wait_sacct(job.id)
    rep = mn.exec("sreport", "-P", "-T", "license/ibm_fez,license/ibm_torino", "cluster",
                  "AccountUtilizationByUser", "start=now-1day", "end=now+1hour")
    assert rep.returncode == 0, rep.stderr
    assert "Usage reported in TRES Minutes" in rep.stdout, rep.stdout
    assert "Cluster|Account|Login|Proper Name|TRES Name|Used" in rep.stdout, rep.stdout
    rows = mn.exec("sacct", "-n", "-P", "-X", "-a", "-A", "chemistry", "-S", "now-1hour",
                   "-o", "Account,AllocTRES,ElapsedRaw").stdout.splitlines()
    lane_seconds = 0
    for row in rows:
        account, tres, elapsed = row.split("|")
        for item in tres.split(","):
            if item.startswith("license/ibm_fez="):
                lane_seconds += int(item.split("=")[1]) * int(elapsed)
    assert lane_seconds >= 2, rows


def test_grptres_licence_limit_per_account(mn: MultiCluster, jobs: list[str]) -> None:
    """physics may hold one ibm_fez lane at a time: its 2nd job pends with AssocGrpLicense
    while chemistry's job runs."""
    mod = mn.exec("sacctmgr", "-i", "modify", "account", "physics", "set",
                  "GrpTRES=license/ibm_fez=1")
    assert mod.returncode == 0, mod.stderr
    try:
        args = ("-p", "quantum", "-L", "ibm_fez:1", "--q_backend=ibm_fez", "-o", "/dev/null")
        for _ in range(2):
            jobs.append(mn.submit(SLEEP, *args, "-A", "physics", user=USER, wait=False).id)
        mn.wait_state(jobs[0], {"RUNNING"}, timeout=60)
        mn.wait_state(jobs[1], {"PENDING"}, timeout=30, reason="AssocGrpLicense")
        jobs.append(mn.submit(SLEEP, *args, user=USER2, wait=False).id)  # chemistry
        fields = mn.wait_state(jobs[2], {"RUNNING"}, timeout=60)
        assert fields["Account"] == "chemistry"
        # the pool is now exhausted too: Slurm reports that reason instead
        state, reason = mn.squeue(jobs[1])[jobs[1]]
        assert state == "PENDING" and reason in ("AssocGrpLicense", "Licenses"), reason
    finally:
        mn.exec("sacctmgr", "-i", "modify", "account", "physics", "set",
                "GrpTRES=license/ibm_fez=-1")


def test_root_can_annotate_a_finished_job(mn: MultiCluster) -> None:
    """22.05: `scontrol update AdminComment=` is refused once the job ended, but
    `sacctmgr modify job` changes the stored record (AdminComment, SystemComment, Comment),
    from the controller or a compute node; the job's user may set Comment only."""
    job = mn.submit("true\n", "-p", "quantum", "-L", "ibm_fez:1", "--q_backend=ibm_fez",
                    "-w", "qnode2")
    mn.wait_sacct(job.id)
    usage = mn.wait_usage("qnode2", job.id)["usage"]
    late = mn.exec("scontrol", "update", f"job={job.id}", "AdminComment=late")
    assert late.returncode != 0 and "already finished" in late.stderr, late
    set_ = mn.exec("sacctmgr", "-i", "modify", "job", "where", f"jobid={job.id}", "set",
                   f"AdminComment={usage}", node="qnode2")
    assert set_.returncode == 0, set_.stderr
    forged = mn.exec("sacctmgr", "-i", "modify", "job", "where", f"jobid={job.id}", "set",
                     "AdminComment=forged", user=USER)
    assert forged.returncode != 0 and "privilege" in forged.stderr, forged
    for _ in range(20):
        row = mn.sacct(job.id, "JobID,AdminComment", "-X")
        if row and row[0]["AdminComment"] == usage:
            break
        time.sleep(0.5)
    assert row[0]["AdminComment"] == usage, row


def test_epilog_books_qpu_use_in_the_accounting_record(mn: MultiCluster) -> None:
    """With [accounting] admin_comment = true (set by scripts/cluster when slurmdbd runs),
    each QPU job's epilog writes its usage line into the job's AdminComment: what
    `sacct -o AdminComment` shows admins, joinable with every other accounting field."""
    job = mn.submit("true\n", "-p", "quantum", "-L", "ibm_fez:1", "--q_backend=ibm_fez",
                    "-w", "qnode3")
    assert job.state == "COMPLETED"
    mn.wait_sacct(job.id)
    usage = str(mn.wait_usage("qnode3", job.id)["usage"])
    assert usage.startswith("qpu backend=ibm_fez lanes=1 ") and "quantum_seconds=" in usage
    row: list[dict[str, str]] = []
    for _ in range(60):
        row = mn.sacct(job.id, "JobID,AdminComment", "-X")
        if row and row[0]["AdminComment"] == usage:
            break
        time.sleep(0.5)
    assert row and row[0]["AdminComment"] == usage, row
