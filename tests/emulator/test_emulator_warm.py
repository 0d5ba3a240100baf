"""Lane workers: each lane is pinned to its own worker process, warmed up at start.

Observable: every job's log names the pid of the worker process that ran it (the lane takes
it from ``worker.run_job_in_worker``), and ``GET /health`` reports how many lanes have
finished warming up. Small 5-qubit fake devices keep the warm-ups short.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time

import pytest
import requests
from qiskit import QuantumCircuit

from qproxy.emulator.backends import Device
from qproxy.emulator.jobs import Scheduler
from qproxy.emulator.reader import EmulatorReader
from tests.support.emulator import alive, descendants

pytestmark = [pytest.mark.timeout(300)]
BACKENDS = "small_a=fake_manila_v2,small_b=fake_lima_v2"
WARM_TIMEOUT = 180


@pytest.fixture(scope="module")
def small_emulator(start_emulator):  # type: ignore[no-untyped-def]
    """Two small backends, one lane each."""
    return start_emulator(backends=BACKENDS, lanes="1")


def _headers(emu) -> dict[str, str]:  # type: ignore[no-untyped-def]
    r = requests.post(
        emu.url + "/identity/token",
        data={"grant_type": "urn:ibm:params:oauth:grant-type:apikey", "apikey": emu.api_key},
        timeout=10,
    )
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def _params() -> dict:
    from qiskit_ibm_runtime import RuntimeEncoder

    qc = QuantumCircuit(1)
    qc.x(0)
    qc.measure_all()
    doc = {"pubs": [(qc, None, 20)], "version": 2, "support_qiskit": True, "options": {}}
    return json.loads(json.dumps(doc, cls=RuntimeEncoder))


def run_job(emu, backend: str) -> tuple[str, int | None]:  # type: ignore[no-untyped-def]
    """Run one small sampler job to the end: (final status, pid of the worker that ran it)."""
    api, h = emu.url + "/api/v1", _headers(emu)
    r = requests.post(
        api + "/jobs",
        json={"program_id": "sampler", "backend": backend, "params": _params()},
        headers=h,
        timeout=30,
    )
    assert r.status_code == 200, r.text
    job_id = r.json()["id"]
    deadline = time.time() + 120
    while (status := requests.get(f"{api}/jobs/{job_id}", headers=h, timeout=10).json()[
        "status"
    ]) not in ("Completed", "Failed", "Cancelled"):
        assert time.time() < deadline, f"job {job_id} still {status}"
        time.sleep(0.1)
    logs = requests.get(f"{api}/jobs/{job_id}/logs", headers=h, timeout=10).text
    m = re.search(r"executed by worker process (\d+)", logs)
    return status, int(m.group(1)) if m else None


def test_health_reports_all_lanes_warm(small_emulator) -> None:  # type: ignore[no-untyped-def]
    reader = EmulatorReader(small_emulator.url, small_emulator.api_key)
    first = requests.get(small_emulator.url + "/health", timeout=10).json()  # no token needed
    assert first["status"] == "ok" and first["lanes"] == 2 and 0 <= first["lanes_warm"] <= 2
    assert reader.wait_warm(WARM_TIMEOUT)
    assert reader.health() == {"status": "ok", "lanes": 2, "lanes_warm": 2}


def test_lane_keeps_its_worker_process(small_emulator) -> None:  # type: ignore[no-untyped-def]
    status_a1, pid_a1 = run_job(small_emulator, "small_a")
    status_a2, pid_a2 = run_job(small_emulator, "small_a")
    status_b, pid_b = run_job(small_emulator, "small_b")
    assert status_a1 == status_a2 == status_b == "Completed"
    assert pid_a1 is not None and pid_b is not None
    assert pid_a1 == pid_a2  # one lane: always the same (warmed) worker
    assert pid_b != pid_a1  # another backend's lane: another worker
    assert small_emulator.proc.pid not in (pid_a1, pid_b)


def test_dead_worker_is_replaced_and_warmed(small_emulator) -> None:  # type: ignore[no-untyped-def]
    reader = EmulatorReader(small_emulator.url, small_emulator.api_key)
    _, pid = run_job(small_emulator, "small_a")
    assert pid is not None and pid != small_emulator.proc.pid
    os.kill(pid, signal.SIGKILL)  # the lane's worker, a grandchild of the emulator we started
    status, _ = run_job(small_emulator, "small_a")
    assert status == "Failed"  # the job that found the worker gone
    assert reader.wait_warm(WARM_TIMEOUT)
    status, new_pid = run_job(small_emulator, "small_a")
    assert status == "Completed" and new_pid not in (None, pid)
    assert "died" in small_emulator.stderr()


async def _settle(scheduler: Scheduler, timeout: float = WARM_TIMEOUT) -> None:
    """Wait until every lane's warm-up has finished (succeeded or failed)."""
    futures = list(scheduler._warming.values())
    await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), timeout)
    await asyncio.sleep(0)  # let the done-callbacks run


async def test_failed_warm_up_counts_as_not_warm(caplog: pytest.LogCaptureFixture) -> None:
    good = Device("good", "fake_lima_v2")
    bad = Device("bad", "fake_lima_v2")
    bad.fake_name = "fake_no_such_device"  # the worker cannot build it: warm_up raises
    scheduler = Scheduler({"good": good, "bad": bad}, min_job_seconds=0)
    await scheduler.start()
    try:
        assert scheduler.lanes_total == 2
        await _settle(scheduler)
        assert scheduler.lanes_warm == 1
        assert "warm-up of bad lane 0 failed" in caplog.text
        assert not any(task.done() for task in scheduler._workers)  # the lanes still run
    finally:
        await scheduler.stop()


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads /proc")
def test_idle_workers_exit_when_the_emulator_is_killed(start_emulator) -> None:  # type: ignore[no-untyped-def]
    """A SIGKILLed emulator leaves no lane worker (nor any other process) behind; with a
    job running: tests/emulator/test_emulator_stop.py."""
    emu = start_emulator(backends="small_a=fake_lima_v2", lanes="1")
    status, pid = run_job(emu, "small_a")
    procs = descendants(emu.proc.pid)
    assert status == "Completed" and pid in procs and alive(pid)
    emu.proc.kill()
    emu.proc.wait(timeout=10)
    deadline = time.time() + 10
    while any(alive(p) for p in procs) and time.time() < deadline:
        time.sleep(0.05)
    assert not any(alive(p) for p in procs)
