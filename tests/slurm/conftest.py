"""A real single-node Slurm (scripts/cluster up, once per session) and helpers to submit
jobs as the unprivileged job user. Jobs run as that user so "root-only" means something."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STATE = Path(os.environ.get("QPROXY_CLUSTER_DIR", REPO / ".state" / "cluster")).resolve()
USER = os.environ.get("QPROXY_CLUSTER_USER", "qpuuser")
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
         "BOOT_FAIL", "DEADLINE", "PREEMPTED"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/slurm/" in str(item.fspath):
            item.add_marker(pytest.mark.slurm)


@dataclass
class Job:
    id: str
    workdir: Path
    fields: dict[str, str] = field(default_factory=dict)

    @property
    def state(self) -> str:
        return self.fields.get("JobState", "")

    def output(self, name: str = "out.txt") -> str:
        try:
            return (self.workdir / name).read_text()
        except OSError:
            return ""


@dataclass
class Cluster:
    state: Path
    env: dict[str, str]
    user: str = USER
    up_seconds: float = 0.0

    @property
    def config(self) -> Path:
        return self.state / "qproxy.toml"

    @property
    def run_dir(self) -> Path:
        return self.state / "run"

    @property
    def audit_dir(self) -> Path:
        return self.state / "audit"

    def vendor_secret(self) -> str:
        return (self.state / "emulator.keys").read_text().split()[0]

    def workdir(self) -> Path:
        d = self.state / "jobs" / uuid.uuid4().hex[:10]
        d.mkdir(parents=True)
        subprocess.run(["chown", self.user, str(d)], check=True)
        return d

    def as_user(
        self,
        *cmd: str,
        cwd: Path | None = None,
        timeout: float = 300,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        full_env = dict(self.env, **(env or {}))
        envargs = [f"{k}={v}" for k, v in full_env.items()]
        return subprocess.run(
            ["runuser", "-u", self.user, "--", "env", "-i", *envargs, *cmd],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def sbatch(
        self,
        script: str,
        *args: str,
        wait: bool = True,
        env: dict[str, str] | None = None,
        workdir: Path | None = None,
        timeout: float = 300,
    ) -> Job:
        wd = workdir or self.workdir()
        path = wd / f"job-{uuid.uuid4().hex[:6]}.sh"
        path.write_text("#!/bin/bash\n" + script)
        path.chmod(0o755)
        cmd = ["sbatch", "--parsable", "-o", str(wd / "out.txt"), *args]
        proc = self.as_user(*cmd, str(path), cwd=wd, env=env, timeout=timeout)
        m = re.match(r"(\d+)", proc.stdout.strip())
        assert m, f"sbatch failed ({proc.returncode}): {proc.stderr}"
        job = Job(m.group(1), wd)
        # not `sbatch --wait`: it polls with back-off up to 10 s; and wait past COMPLETING
        # (epilog running) to the final state
        job.fields = self.wait_state(job.id, FINAL, timeout) if wait else self.show_job(job.id)
        return job

    def show_job(self, job_id: str) -> dict[str, str]:
        out = subprocess.run(
            ["scontrol", "-o", "show", "job", job_id],
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        return dict(re.findall(r"(\S+?)=(\S*)", out))

    def wait_state(
        self, job_id: str, states: set[str], timeout: float = 120, reason: str | None = None
    ) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        fields: dict[str, str] = {}
        while time.monotonic() < deadline:
            fields = self.show_job(job_id)
            if fields.get("JobState") in states and reason in (None, fields.get("Reason")):
                return fields
            time.sleep(0.2)
        raise AssertionError(f"job {job_id} never reached {states}: {fields.get('JobState')}")

    def wait_gone(self, job_id: str, timeout: float = 60) -> None:
        """Until the epilog has torn the job's QPU state down."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not (self.run_dir / job_id).exists() and self.usage(job_id):
                return
            time.sleep(0.2)
        raise AssertionError(f"job {job_id}: QPU state still present after {timeout}s")

    def usage(self, job_id: str) -> dict[str, object] | None:
        try:
            lines = (self.audit_dir / "usage.jsonl").read_text().splitlines()
        except OSError:
            return None
        for line in reversed(lines):
            rec = json.loads(line)
            if rec.get("job_id") == job_id:
                return rec
        return None

    def node_state(self, settle: float = 15) -> str:
        """The node's state once jobs have finished completing (drain/down show at once)."""
        deadline = time.monotonic() + settle
        while True:
            state = subprocess.run(
                ["sinfo", "-h", "-N", "-o", "%T"],
                env=self.env,
                capture_output=True,
                text=True,
                check=False,
            ).stdout.strip()
            if state.rstrip("*") not in ("completing", "mixed", "allocated") or (
                time.monotonic() > deadline
            ):
                return state
            time.sleep(0.2)

    def emulator_ready(self) -> bool:
        return (self.state / "emulator.ready").exists()


def _env() -> dict[str, str]:
    bindir = str(Path(sys.executable).parent)
    return {
        "SLURM_CONF": str(STATE / "slurm" / "slurm.conf"),
        "PATH": f"{bindir}:/usr/local/bin:/usr/bin:/bin",
        "HOME": f"/home/{USER}",
        "LANG": "C.UTF-8",
    }


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    if os.geteuid() != 0:
        pytest.skip("the Slurm tests start a real cluster and need root")
    t0 = time.monotonic()
    subprocess.run(
        [sys.executable, str(REPO / "scripts" / "cluster"), "up"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    c = Cluster(STATE, _env(), up_seconds=time.monotonic() - t0)
    print(f"\ncluster up in {c.up_seconds:.1f}s", file=sys.stderr)
    yield c
    if not os.environ.get("QPROXY_KEEP_CLUSTER"):
        subprocess.run([sys.executable, str(REPO / "scripts" / "cluster"), "down"], check=False)


@pytest.fixture(scope="session")
def qpu_cluster(cluster: Cluster) -> Cluster:
    """Flows that talk to a QPU need `qproxy emulator` (and `qproxy serve`)."""
    if not cluster.emulator_ready():
        pytest.fail("the QPU emulator of the local cluster is not running (see .state/cluster)")
    return cluster
