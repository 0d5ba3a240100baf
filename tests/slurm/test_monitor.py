"""`qproxy monitor` on the local cluster against the real emulator: the device goes offline
(the emulator's admin endpoint) -> a new QPU job stays PENDING with the reason visible to its
user; the device comes back -> the job runs and completes; a job already running when the
device went offline runs on untouched."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests.support.cluster import EMULATOR_URL, Cluster, slurm_exec
from tests.support.waiting import wait_for

RES = "qpu_down_ibm_fez"


def device(cluster: Cluster, status: str, message: str = "") -> str:
    out = subprocess.run(
        [sys.executable, "-m", "qproxy", "emulator", "device", "fake_fez", status,
         "--message", message, "--url", EMULATOR_URL,
         "--api-key-file", str(cluster.state / "emulator.keys")],
        capture_output=True, text=True, timeout=30, check=True)
    return out.stdout


def reservations(cluster: Cluster) -> str:
    return subprocess.run([*slurm_exec(), "scontrol", "-o", "show", "reservation"],
                          env=cluster.env, capture_output=True, text=True, check=False).stdout


@pytest.fixture
def monitor(qpu_cluster: Cluster) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [*slurm_exec(), sys.executable, "-m", "qproxy", "monitor", "--config",
         str(qpu_cluster.config),
         "--interval", "1", "--confirm", "1", "--resources", "ibm_fez"],
        env={**qpu_cluster.env, "PATH": f"{qpu_cluster.env['PATH']}:/usr/sbin:/usr/bin"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        yield proc
    finally:
        proc.terminate()
        proc.wait(10)
        device(qpu_cluster, "online")
        subprocess.run([*slurm_exec(), "scontrol", "delete", f"reservation={RES}"],
                       env=qpu_cluster.env, capture_output=True, check=False)


def test_offline_device_holds_new_jobs_only(qpu_cluster: Cluster,
                                             monitor: subprocess.Popen[str]) -> None:
    c = qpu_cluster
    running = c.sbatch("sleep 30\necho RAN-TO-THE-END\n", "--q_backend=ibm_fez",
                       "-L", "ibm_fez:1", wait=False)
    new = None
    try:
        c.wait_state(running.id, {"RUNNING"})
        assert "offline" in device(c, "offline", "calibration")
        wait_for(lambda: RES in reservations(c), 30, "the reservation")
        assert "Licenses=ibm_fez:2" in reservations(c)
        # one licence is free, so without the monitor this job would start at once
        new = c.sbatch("echo NEW-JOB-RAN\n", "--q_backend=ibm_fez", "-L", "ibm_fez:1",
                       wait=False)
        c.wait_state(new.id, {"PENDING"}, timeout=20, reason="Licenses")
        wait_for(lambda: "offline: calibration" in c.as_user(
            "scontrol", "show", "job", new.id).stdout, 30, "the job's note")
        shown = c.as_user("scontrol", "show", "job", new.id).stdout
        assert "unavailable since" in shown and "qproxy monitor" in shown
        # writing the note is a job update, after which slurmctld shows Reason=None until its
        # next scheduling pass sets Licenses again (at most sched_interval, 60 s by default)
        t0 = time.monotonic()
        c.wait_state(new.id, {"PENDING"}, timeout=90, reason="Licenses")
        print(f"Reason=Licenses again {time.monotonic() - t0:.1f} s after the note")
        assert "(Licenses)" in c.as_user("squeue", "-j", new.id).stdout
        time.sleep(3)  # a few polls: still held, the running job still running
        assert c.show_job(new.id)["JobState"] == "PENDING"
        assert c.show_job(running.id)["JobState"] == "RUNNING"

        device(c, "online")
        done = c.wait_state(new.id, {"COMPLETED", "FAILED", "CANCELLED"}, timeout=90)
        assert done["JobState"] == "COMPLETED", new.output()
        assert "NEW-JOB-RAN" in new.output()
        assert RES not in reservations(c)
        assert "qproxy monitor" not in c.show_job(new.id).get("AdminComment", "")
        final = c.wait_state(running.id, {"COMPLETED", "FAILED", "CANCELLED"}, timeout=90)
        assert final["JobState"] == "COMPLETED" and final["ExitCode"] == "0:0"
        assert "RAN-TO-THE-END" in running.output()
    finally:
        c.as_user("scancel", running.id)
        if new is not None:
            c.as_user("scancel", new.id)
    monitor.terminate()
    log = monitor.communicate(timeout=10)[0]
    assert "ibm_fez device unavailable: offline: calibration" in log
    assert f"reservation {RES} deleted" in log
    assert c.vendor_secret() not in log
