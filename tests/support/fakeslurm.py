#!/usr/bin/env python3
"""A fake Slurm CLI for the unit tests (sbatch, scontrol, scancel, sacct by $FAKE_SLURM_CMD).

State lives in $FAKE_SLURM_DIR: ``jobs.json`` maps job id -> ``scontrol -o`` line fields,
``calls.jsonl`` records every call. Tests flip a job's state by editing jobs.json, so the
primitives' state machine is exercised without a cluster.
"""

import json
import os
import sys
from pathlib import Path

D = Path(os.environ["FAKE_SLURM_DIR"])
name = os.environ["FAKE_SLURM_CMD"]
args = sys.argv[1:]
with open(D / "calls.jsonl", "a") as fh:
    fh.write(json.dumps([name, *args]) + "\n")
if name == "sbatch":  # what the job would inherit from the submitting process
    (D / "sbatch_env.json").write_text(json.dumps(
        {k: os.environ.get(k) for k in ("SLURM_EXPORT_ENV", "SLURM_GET_USER_ENV", "MY_VAR")}))
jobs_path = D / "jobs.json"
jobs = json.loads(jobs_path.read_text()) if jobs_path.exists() else {}
extra = json.loads((D / "extra.json").read_text()) if (D / "extra.json").exists() else {}


def save() -> None:
    jobs_path.write_text(json.dumps(jobs))


if name == "sbatch":
    if (D / "sbatch_fail").exists():
        print((D / "sbatch_fail").read_text(), file=sys.stderr)
        sys.exit(1)
    job_id = str(100 + len(jobs))
    jobs[job_id] = {"JobId": job_id, "JobState": "PENDING", "Reason": "None",
                    "UserId": f"u({os.getuid()})", "ExitCode": "0:0"}
    save()
    print(job_id)
elif name == "scancel":
    if args[0] in jobs:
        jobs[args[0]]["JobState"] = "CANCELLED"
        save()
elif name == "sacct":
    print("Slurm accounting storage is disabled")
elif name == "scontrol":
    if args[0] == "--json":
        print("scontrol: unrecognized option '--json'", file=sys.stderr)
        sys.exit(1)
    if args[:3] == ["-o", "show", "job"]:
        job = jobs.get(args[3])
        if job is None:
            print("slurm_load_jobs error: Invalid job id specified", file=sys.stderr)
            sys.exit(1)
        print(" ".join(f"{k}={v}" for k, v in job.items()))
    elif args[:3] == ["-o", "show", "licenses"]:
        for lic, total in extra.get("licenses", {}).items():
            if lic == args[3]:
                print(f"LicenseName={lic} Total={total} Used=0 Free={total}")
    elif args[:3] == ["-o", "show", "node"]:
        print(f"NodeName=n1 Gres=qpu:{extra.get('gres', 3)} State=IDLE")
    elif args[:2] == ["show", "config"]:
        print("PlugStackConfig         = /nonexistent/plugstack.conf")
else:
    sys.exit(f"fakeslurm: unknown command {name}")
