"""The local single-node Slurm of ``scripts/cluster`` as the tests use it: where it lives, the
clean environment jobs are submitted with, and helpers to submit jobs as the unprivileged job
user (so "root-only" means something). The session fixtures are in tests/conftest.py; the
benchmarks use the same location and environment. Every path, port and name comes from
``scripts.localcluster.settings`` (the settings ``scripts/cluster`` itself builds)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from scripts.localcluster.settings import Settings
from scripts.localcluster.system import inside

# Which Slurm (scripts/cluster --slurm, from QPROXY_CLUSTER_SLURM): the host's, or a Debian
# release's in a chroot + netns; then the tests themselves run inside that netns (scripts/test
# does that) and every Slurm command goes through `scripts/slurmroot exec` (a 22.05 client
# cannot talk to a 24.11 ctld). Always the single-node layout, whatever _NODES says.
SETTINGS = Settings.from_argv(["--nodes", "1", "--no-accounting"])
REPO = SETTINGS.repo
SUITE = SETTINGS.suite
STATE = SETTINGS.state
USER = SETTINGS.job_user
EMULATOR_URL = SETTINGS.emulator_url
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
         "BOOT_FAIL", "DEADLINE", "PREEMPTED"}


def cluster_env(**extra: str) -> dict[str, str]:
    """The clean environment jobs are submitted with (as the cluster's job user)."""
    return {
        "SLURM_CONF": str(SETTINGS.slurm_conf),
        "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
        "HOME": f"/home/{USER}", "LANG": "C.UTF-8", **extra,
    }


def slurm_exec(user: str | None = None) -> list[str]:
    """Prefix that runs a command where this cluster's Slurm lives (as ``user`` if given)."""
    return inside(SETTINGS, user)


def cluster_cmd(*args: str, **kwargs: object) -> subprocess.CompletedProcess[bytes]:
    """``scripts/cluster ARGS`` on this cluster (up is idempotent: a no-op when everything
    already runs); the environment names it unless the caller passes ``env``."""
    kwargs.setdefault("env", dict(os.environ, **SETTINGS.env()))
    return subprocess.run([sys.executable, str(REPO / "scripts" / "cluster"), *args],
                          **kwargs)  # type: ignore[call-overload, no-any-return]


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
    settings: Settings
    env: dict[str, str]
    user: str = ""  # default: the settings' job user
    up_seconds: float = 0.0

    def __post_init__(self) -> None:
        self.user = self.user or self.settings.job_user

    @property
    def state(self) -> Path:
        return self.settings.state

    @property
    def config(self) -> Path:
        return self.settings.qproxy_conf

    @property
    def run_dir(self) -> Path:
        return self.settings.run_dir

    @property
    def audit_dir(self) -> Path:
        return self.settings.audit_dir

    def vendor_secret(self) -> str:
        return self.settings.emu_keys.read_text().split()[0]

    def workdir(self) -> Path:
        d = self.settings.jobs_dir / uuid.uuid4().hex[:10]
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
            [*slurm_exec(self.user), "env", "-i", *envargs, *cmd],
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
            [*slurm_exec(), "scontrol", "-o", "show", "job", job_id],
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
        raise AssertionError(f"job {job_id} never reached {states} (reason {reason}): "
                             f"{fields.get('JobState')} {fields.get('Reason')}")

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
                [*slurm_exec(), "sinfo", "-h", "-N", "-o", "%T"],
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
        return self.settings.emu_ready.exists()
