"""The several-node cluster as tests/multinode use it: every Slurm command runs through
`scripts/cluster exec` (the controller's network namespace, or a node's with --node), jobs
are submitted as the unprivileged users (qpuuser: accounts physics + chemistry, qpuuser2:
chemistry only), and each node's qproxy files are under STATE/nodes/qnodeI."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

from scripts.localcluster.settings import Settings
from tests.support.cluster import FINAL, Cluster, Job


def _settings() -> Settings:
    """`scripts/cluster up --nodes 3 --accounting` as the environment names it, its state dir
    from QPROXY_MN_CLUSTER_DIR (QPROXY_CLUSTER_DIR is the single-node cluster's)."""
    env = {k: v for k, v in os.environ.items() if k != "QPROXY_CLUSTER_DIR"}
    if os.environ.get("QPROXY_MN_CLUSTER_DIR"):
        env["QPROXY_CLUSTER_DIR"] = os.environ["QPROXY_MN_CLUSTER_DIR"]
    return Settings.from_argv(["--nodes", "3", "--accounting"], env)


SETTINGS = _settings()
NODES = SETTINGS.nodes
NAME = SETTINGS.name
STATE = SETTINGS.state
USER = SETTINGS.job_user
USER2 = SETTINGS.job_user2
NODE_NAMES = SETTINGS.node_names


def script_env() -> dict[str, str]:
    """scripts/cluster's environment: this cluster's settings (the rest passes through)."""
    return dict(os.environ, **SETTINGS.env())


class MultiCluster(Cluster):
    def __init__(self) -> None:
        super().__init__(SETTINGS, {}, user=USER)
        self.script = SETTINGS.repo / "scripts" / "cluster"

    def job_env(self, user: str) -> dict[str, str]:
        return {"SLURM_CONF": str(self.settings.slurm_conf),
                "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
                "HOME": f"/home/{user}", "LANG": "C.UTF-8"}

    def exec(self, *cmd: str, user: str | None = None, node: str | None = None,
             cwd: Path | None = None, timeout: float = 300,
             ) -> subprocess.CompletedProcess[str]:
        """CMD in the controller namespace (root, or USER with a clean job environment), or
        on NODE (its network, UTS and mount namespaces)."""
        prefix = [sys.executable, str(self.script), "exec",
                  *(["--node", node] if node else []), *(["--user", user] if user else []),
                  "--"]
        if user:
            prefix += ["env", "-i", *(f"{k}={v}" for k, v in self.job_env(user).items())]
        return subprocess.run([*prefix, *cmd], cwd=cwd, env=script_env(), capture_output=True,
                              text=True, timeout=timeout, check=False)

    def as_user(self, *cmd: str, cwd: Path | None = None, timeout: float = 300,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        extra = [f"{k}={v}" for k, v in (env or {}).items()]
        return self.exec(*(["env", *extra] if extra else []), *cmd, user=self.user, cwd=cwd,
                         timeout=timeout)

    def show_job(self, job_id: str) -> dict[str, str]:
        out = self.exec("scontrol", "-o", "show", "job", job_id).stdout
        return dict(re.findall(r"(\S+?)=(\S*)", out))

    def workdir_for(self, user: str) -> Path:
        d = self.settings.jobs_dir / uuid.uuid4().hex[:10]
        d.mkdir(parents=True)
        subprocess.run(["chown", user, str(d)], check=True)
        return d

    def submit(self, script: str, *args: str, user: str = USER, wait: bool = True,
               timeout: float = 300) -> Job:
        """sbatch SCRIPT as USER (its output in out.txt of a fresh workdir)."""
        wd = self.workdir_for(user)
        path = wd / "job.sh"
        path.write_text("#!/bin/bash\n" + script)
        path.chmod(0o755)
        proc = self.exec("sbatch", "--parsable", "-o", str(wd / "out.txt"), *args, str(path),
                         user=user, cwd=wd)
        m = re.match(r"(\d+)", proc.stdout.strip())
        assert m, f"sbatch failed ({proc.returncode}): {proc.stderr}"
        job = Job(m.group(1), wd)
        job.fields = self.wait_state(job.id, FINAL, timeout) if wait else self.show_job(job.id)
        return job

    def sacct(self, job_id: str, fields: str, *extra: str) -> list[dict[str, str]]:
        names = fields.split(",")
        out = self.exec("sacct", "-n", "-P", "-j", job_id, "-o", fields, *extra).stdout
        return [dict(zip(names, ln.split("|"), strict=False)) for ln in out.splitlines()]

    def wait_sacct(self, job_id: str, timeout: float = 60) -> dict[str, str]:
        """The job's allocation line once slurmdbd has its end (sacct lags slurmctld)."""
        deadline = time.monotonic() + timeout
        rows: list[dict[str, str]] = []
        while time.monotonic() < deadline:
            rows = self.sacct(job_id, "JobID,Account,State,NodeList,AllocTRES,ElapsedRaw,End",
                              "-X")
            if rows and rows[0]["End"] not in ("", "Unknown"):
                return rows[0]
            time.sleep(0.5)
        raise AssertionError(f"sacct never showed job {job_id} finished: {rows}")

    def node_usage(self, node: str, job_id: str) -> list[dict[str, object]]:
        """This job's lines in NODE's {audit_dir}/usage.jsonl (one per node it ran on)."""
        try:
            lines = (self.settings.nodes_dir / node / "audit" / "usage.jsonl").read_text()
        except OSError:
            return []
        recs = [json.loads(ln) for ln in lines.splitlines() if ln.strip()]
        return [r for r in recs if r.get("job_id") == job_id]

    def wait_usage(self, node: str, job_id: str, timeout: float = 60) -> dict[str, object]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if recs := self.node_usage(node, job_id):
                return recs[-1]
            time.sleep(0.2)
        raise AssertionError(f"no usage line for job {job_id} on {node}")

    def squeue(self, *job_ids: str) -> dict[str, tuple[str, str]]:
        """job id -> (state, reason)."""
        out = self.exec("squeue", "-h", "-j", ",".join(job_ids), "-o", "%i %T %r").stdout
        return {p[0]: (p[1], p[2]) for ln in out.splitlines() if len(p := ln.split()) == 3}

    def cancel(self, *job_ids: str) -> None:
        if job_ids:
            self.exec("scancel", *job_ids)


_READ = """
import json, sys
from qproxy.emulator.reader import EmulatorReader
url, key, what = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
r = EmulatorReader(url, key)
if what["op"] == "get":
    print(json.dumps(r.get(what["path"])))
elif what["op"] == "warm":
    print(json.dumps(r.wait_warm(what["timeout"])))
elif what["op"] == "activity":
    print(json.dumps(r.activity(what["t0"])))
else:
    print(json.dumps(r.jobs_since(what["t0"], pending=what.get("pending"))))
"""


class CtlEmulatorReader:
    """The emulator as the centre sees it (the vendor key), read from inside the controller
    namespace: it listens on the controller's address, which the host cannot reach."""

    def __init__(self, cluster: MultiCluster) -> None:
        self.url = cluster.settings.emulator_url
        self.cluster = cluster

    def _ask(self, what: dict[str, object], timeout: float = 60) -> object:
        out = self.cluster.exec(sys.executable, "-c", _READ, self.url,
                                self.cluster.vendor_secret(), json.dumps(what), timeout=timeout)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def get(self, path: str) -> object:
        return self._ask({"op": "get", "path": path})

    def jobs_since(self, t0: float, *, pending: bool | None = None) -> list[dict[str, object]]:
        return self._ask({"op": "jobs", "t0": t0, "pending": pending})  # type: ignore[return-value]

    def wait_warm(self, timeout: float) -> bool:
        return bool(self._ask({"op": "warm", "timeout": timeout}, timeout + 60))

    def activity(self, t0: float) -> list[dict[str, object]]:
        """EmulatorReader.activity, in one process inside the namespace (one GET per job)."""
        return self._ask({"op": "activity", "t0": t0}, 300)  # type: ignore[return-value]
