"""Jobs in real cgroups (proctrack/cgroup + task/cgroup on cgroup v1, as at a centre; see
scripts/localcluster/cgroups.py) and the proxies outside them: a spare started by user A's
prolog forks user B's proxy, and A's job running out of memory in its cgroup, its end
killing every process of that cgroup, and its cancellation never take B's proxy down; B's
job finishes its QPU work. Where the proxies live: qproxy/node/cgroup.py."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from qproxy.node import cgroup, sparepool
from qproxy.node.process import alive, is_our_proxy
from qproxy.slurm import spares
from tests.support.cluster import Cluster, Job
from tests.support.waiting import wait_for

TOOL = Path(__file__).parents[1] / "support" / "jobtool.py"
QPU = ("--q_backend=ibm_fez", "--gres=qpu:1")
# user A's job: its own cgroups, then (once ./go exists) more memory than its 200 MB limit
HOG = ("cat /proc/self/cgroup > cgroups.txt\n"
       "for i in $(seq 600); do [ -e go ] && break; sleep 0.2; done\n"
       "python3 -c 'x = []\nwhile True: x.append(bytearray(32 << 20))'\n")


@pytest.fixture
def user_a(qpu_cluster: Cluster) -> Iterator[Cluster]:
    """The cluster's second user, whose jobs end badly; both users' jobs are gone after."""
    a = replace(qpu_cluster, user=qpu_cluster.settings.job_user2)
    if not (qpu_cluster.state / "cgroup.json").exists():
        pytest.skip("this cluster runs without cgroups (QPROXY_CLUSTER_CGROUPS=0, or none "
                    "usable: see `scripts/cluster up`'s output)")
    yield a
    for c in (a, qpu_cluster):
        c.as_user("scancel", "--user", c.user)
    wait_for(lambda: not any(c.as_user("squeue", "-h", "--user", c.user).stdout.strip()
                             for c in (a, qpu_cluster)), 60, "no job of either user")


def _ready_spare(cluster: Cluster) -> tuple[int, str] | None:
    ready = [(pid, sid) for path, pid, sid in sparepool.listing(cluster.run_dir)
             if path.name.endswith(".sock")]
    return ready[0] if ready else None


def _qproxy_cgroups(pid: int) -> None:
    """PID is in no job's cgroup, and in `qproxy` of every v1 hierarchy Slurm uses."""
    text = Path(f"/proc/{pid}/cgroup").read_text()
    assert cgroup.in_jobs(pid) == [], text
    lines = {line.split(":")[1]: line.split(":", 2)[2] for line in text.splitlines()}
    for ctrl in ("freezer", "memory"):
        assert lines[ctrl].endswith(f"/{cgroup.NAME}"), text


def _memory_limit(line: str) -> int:
    """The limit of the job cgroup a /proc/PID/cgroup memory line names (its step's and
    task's may be unlimited below it), read through the mount that shows it."""
    path = line.split(":", 2)[2]
    job = path[:path.index("/step_")] if "/step_" in path else path
    [m] = [m for m in cgroup.mounts(Path("/proc/self/mountinfo").read_text())
           if m.hierarchy == "memory"]
    rel = os.path.relpath(job, m.root)
    return int((Path(m.point) / rel / "memory.limit_in_bytes").read_text())


def _record(cluster: Cluster, job: Job) -> dict[str, object]:
    path = cluster.run_dir / job.id / "record.json"
    wait_for(path.exists, 30, f"job {job.id}'s record", 0.1)
    return dict(json.loads(path.read_text()))


def test_another_users_job_ending_badly_never_takes_down_a_proxy(
        qpu_cluster: Cluster, user_a: Cluster) -> None:
    # no spare on the node: user A's QPU job starts its own proxy, and its prolog the spare
    spares.stop_all(qpu_cluster.run_dir)
    wait_for(lambda: not sparepool.listing(qpu_cluster.run_dir), 30, "no spare", 0.1)
    a = user_a.sbatch(HOG, *QPU, "--mem=200M", wait=False)
    spare_pid, spare_id = wait_for(lambda: _ready_spare(qpu_cluster), 60, "A's spare", 0.1)
    wait_for((a.workdir / "cgroups.txt").exists, 60, "A's job to start", 0.1)
    # A's job runs in its own Slurm cgroups (freezer: proctrack; memory: its 200 MB)
    a_cgroups = (a.workdir / "cgroups.txt").read_text()
    for ctrl in ("freezer", "memory"):
        assert f":{ctrl}:" in a_cgroups and f"/job_{a.id}/" in next(
            ln for ln in a_cgroups.splitlines() if f":{ctrl}:" in ln), a_cgroups
    # ... and the hog below only starts once its limit is known to be 200 MB
    limit = _memory_limit(next(ln for ln in a_cgroups.splitlines() if ":memory:" in ln))
    assert limit == 200 << 20, limit
    _qproxy_cgroups(spare_pid)
    _qproxy_cgroups(int(str(_record(qpu_cluster, a)["pid"])))

    # user B's job: its proxy is forked by the spare A's prolog started
    b = qpu_cluster.sbatch("for i in $(seq 600); do [ -e go ] && break; sleep 0.2; done\n"
                           f"python3 {TOOL} sample-delete\n", *QPU, wait=False)
    rec = _record(qpu_cluster, b)
    assert rec["spare"] == spare_id, rec
    b_pid, b_start = int(str(rec["pid"])), int(str(rec["start_ticks"]))
    _qproxy_cgroups(b_pid)

    # A's job exceeds its memory limit, the OOM killer acts in its cgroup, and the job's
    # end kills every process left in it; then A cancels a second job of theirs
    (a.workdir / "go").touch()
    a.fields = user_a.wait_state(a.id, {"OUT_OF_MEMORY", "FAILED", "COMPLETED"}, 120)
    assert a.fields["JobState"] == "OUT_OF_MEMORY", a.fields
    a2 = user_a.sbatch("sleep 300\n", *QPU, wait=False)
    user_a.wait_state(a2.id, {"RUNNING"}, 60)
    user_a.as_user("scancel", a2.id)
    user_a.wait_state(a2.id, {"CANCELLED"}, 60)
    user_a.wait_gone(a.id)
    user_a.wait_gone(a2.id)

    assert is_our_proxy(b_pid, b.id, spare_id, b_start), "B's proxy is gone"
    assert alive(spare_pid) and _ready_spare(qpu_cluster) == (spare_pid, spare_id)
    (b.workdir / "go").touch()
    b.fields = qpu_cluster.wait_state(b.id, {"COMPLETED", "FAILED", "CANCELLED"}, 180)
    assert b.state == "COMPLETED", b.output()
    assert "delete " in b.output(), b.output()


def test_spare_keeps_out_of_job_cgroups_when_its_cgroup_is_refused(
        qpu_cluster: Cluster, user_a: Cluster) -> None:
    """Entering is best effort: a node where `qproxy` is not root's alone (here: made
    group-writable) keeps its proxies running and says why in their logs."""
    view = [Path(p) for p in _view_mounts(qpu_cluster) if Path(p).name == "freezer"]
    assert view, "no freezer view"
    group = view[0] / cgroup.NAME
    group.mkdir(exist_ok=True)
    os.chmod(group, 0o775)
    try:
        spares.stop_all(qpu_cluster.run_dir)
        wait_for(lambda: not sparepool.listing(qpu_cluster.run_dir), 30, "no spare", 0.1)
        job = user_a.sbatch(f"python3 {TOOL} env-dump env.json\n", *QPU)
        assert job.state == "COMPLETED", job.output()
        spare = wait_for(lambda: _ready_spare(qpu_cluster), 60, "a spare", 0.1)
        log = (qpu_cluster.run_dir / "spares" / f"{spare[1]}.log").read_text()
        assert f"cgroup {group} is not root's alone; not entered" in log, log
    finally:
        os.chmod(group, 0o755)
        for pid, _sid in filter(None, [_ready_spare(qpu_cluster)]):
            os.kill(pid, signal.SIGTERM)  # the next test's spare enters every cgroup again


def _view_mounts(cluster: Cluster) -> list[str]:
    base = str(cluster.state / "cgroup")
    return [m.point for m in cgroup.mounts(Path("/proc/self/mountinfo").read_text())
            if m.point.startswith(base + "/")]
