"""examples/provider on the local cluster: copy it for the job user, read its summary line,
and check what a Bell state must give (the emulator is noisy: FakeFez's noise model puts
~3% of the shots on 01/10 here, so "only 00/11" is checked as a bound)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "provider"


def copy_example(workdir: Path, user: str) -> None:
    for f in EXAMPLE.iterdir():
        shutil.copy(f, workdir / f.name)
    subprocess.run(["chown", "-R", user, str(workdir)], check=True)


def summary(output: str) -> dict[str, Any]:
    for line in output.splitlines():
        if line.startswith("summary: "):
            return dict(json.loads(line[len("summary: "):]))
    raise AssertionError(f"no summary line in:\n{output}")


def assert_bell(res: dict[str, Any], shots: int) -> None:
    counts = res["counts"]
    assert sum(counts.values()) == shots, res
    assert set(counts) <= {"00", "01", "10", "11"}, res
    odd = counts.get("01", 0) + counts.get("10", 0)
    assert odd <= 0.08 * shots, res  # ideal 0; device noise
    assert min(counts.get("00", 0), counts.get("11", 0)) >= 0.4 * shots, res  # ideal 0.5 each
    assert 0.85 < res["zz"] <= 1.0, res  # <ZZ> ideal 1


def run_example_job(cluster: Any, workdir: Path, script: str, output: str, rounds: int,
                    timeout: float) -> tuple[str, dict[str, Any]]:
    """Submit one of the example's job scripts as the job user, wait for it to end and
    return its id and its summary line; it must have COMPLETED."""
    proc = cluster.as_user("sbatch", "--parsable", "-o", output, script, cwd=workdir,
                           env={"HYBRID_ROUNDS": str(rounds), "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.strip().split(";")[0]
    fields = cluster.wait_state(job_id, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"},
                                timeout=timeout)
    out = (workdir / output).read_text()
    assert fields["JobState"] == "COMPLETED", out
    return job_id, summary(out)
