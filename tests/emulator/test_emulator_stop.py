"""Cancel means stop, and workers die with the emulator.

A deliberately long job (``long_sampler_params``: ~60 s of noisy state-vector trajectories
if nothing stops it) runs on a one-lane 16-qubit device. Cancelling it must stop its
simulation and free the lane for the next job at once; killing the emulator (SIGKILL, or a
SIGTERM) in the middle of it must leave no process behind. Figures seen here (2 cores):
cancel -> next job running 0.07 s; SIGKILL -> every worker gone 0.10 s.
"""

from __future__ import annotations

import re
import signal
import sys
import time
from typing import Any

import pytest
import requests

from qproxy.emulator.reader import EmulatorReader, parse_time
from tests.support.emulator import (
    alive,
    api_headers,
    descendants,
    long_sampler_params,
)

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
]
BACKEND = "long=fake_guadalupe_v2"
WARM_TIMEOUT = 180
FREE_WITHIN = 2.0  # seconds from cancel to the next job running (measured: 0.07 s)
GONE_WITHIN = 5.0  # seconds from the emulator's death to its last worker's (measured: 0.1 s)


@pytest.fixture(scope="module")
def one_lane(start_emulator):  # type: ignore[no-untyped-def]
    emu = start_emulator(backends=BACKEND, lanes="1")
    assert EmulatorReader(emu.url, emu.api_key).wait_warm(WARM_TIMEOUT)
    return emu


def submit(emu, params: dict[str, Any], **extra: Any) -> str:  # type: ignore[no-untyped-def]
    body = {"program_id": "sampler", "backend": "long", "params": params, **extra}
    r = requests.post(emu.url + "/api/v1/jobs", json=body, headers=api_headers(emu), timeout=60)
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


def job(emu, job_id: str, what: str = "") -> Any:  # type: ignore[no-untyped-def]
    r = requests.get(f"{emu.url}/api/v1/jobs/{job_id}{what}", headers=api_headers(emu), timeout=10)
    assert r.status_code == 200, r.text
    return r.json() if what != "/logs" else r.text


def wait_status(emu, job_id: str, leave: set[str], timeout: float = 120) -> str:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while (status := job(emu, job_id)["status"]) in leave:
        assert time.monotonic() < deadline, f"job {job_id} still {status}"
        time.sleep(0.02)
    return str(status)


def job_process(emu, job_id: str) -> int:  # type: ignore[no-untyped-def]
    m = re.search(r"\(job process (\d+)\)", job(emu, job_id, "/logs"))
    assert m, job(emu, job_id, "/logs")
    return int(m.group(1))


def start_long_job(emu) -> tuple[str, set[int]]:  # type: ignore[no-untyped-def]
    """Submit the long job, wait until it simulates; (job id, the emulator's processes)."""
    job_id = submit(emu, long_sampler_params())
    assert wait_status(emu, job_id, {"Queued"}) == "Running"
    time.sleep(1.0)  # well inside the simulation (which takes ~60 s)
    procs = descendants(emu.proc.pid)
    assert len(procs) >= 3, procs  # lane worker, the job's fork of it, resource tracker
    return job_id, procs


def test_cancel_stops_the_simulation_and_frees_the_lane(one_lane) -> None:  # type: ignore[no-untyped-def]
    long_id, procs = start_long_job(one_lane)
    next_id = submit(one_lane, long_sampler_params(shots=20))
    assert job(one_lane, next_id)["status"] == "Queued"  # one lane, held by the long job
    t0 = time.time()
    r = requests.post(
        f"{one_lane.url}/api/v1/jobs/{long_id}/cancel", headers=api_headers(one_lane), timeout=10
    )
    assert r.status_code == 204
    assert wait_status(one_lane, next_id, {"Queued"}, timeout=30) in ("Running", "Completed")
    started = parse_time(job(one_lane, next_id, "/metrics")["timestamps"]["running"])
    freed = started - t0
    print(f"\ncancel -> next job running: {freed:.3f} s", file=sys.stderr)
    assert freed < FREE_WITHIN
    assert wait_status(one_lane, next_id, {"Running"}) == "Completed"
    doc = job(one_lane, long_id)
    assert doc["status"] == "Cancelled" and doc["usage"]["quantum_seconds"] < 10
    gone = job_process(one_lane, long_id)
    assert gone in procs and not alive(gone)  # the simulating process itself is gone
    assert "simulation stopped" in job(one_lane, long_id, "/logs")
    # the lane kept its warm worker: same worker process before and after the cancel
    worker = re.search(r"worker process (\d+)", job(one_lane, long_id, "/logs"))
    assert worker and f"worker process {worker.group(1)} " in job(one_lane, next_id, "/logs")


def test_closing_a_session_stops_its_running_job(one_lane) -> None:  # type: ignore[no-untyped-def]
    h = api_headers(one_lane)
    sid = requests.post(
        one_lane.url + "/api/v1/sessions", json={"backend": "long", "mode": "batch"},
        headers=h, timeout=10,
    ).json()["id"]  # fmt: skip
    long_id = submit(one_lane, long_sampler_params(), session_id=sid)
    assert wait_status(one_lane, long_id, {"Queued"}) == "Running"
    time.sleep(0.5)
    pid = job_process_when_running(one_lane)
    r = requests.delete(f"{one_lane.url}/api/v1/sessions/{sid}/close", headers=h, timeout=10)
    assert r.status_code == 204
    assert job(one_lane, long_id)["status"] == "Cancelled"
    deadline = time.monotonic() + FREE_WITHIN
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not alive(pid)


def job_process_when_running(emu) -> int:  # type: ignore[no-untyped-def]
    """The pid of the job process (a grandchild: emulator -> lane worker -> job)."""
    children = descendants(emu.proc.pid)
    grandchildren = {p for p in children if _ppid(p) in children}
    assert len(grandchildren) == 1, children
    return grandchildren.pop()


def _ppid(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as fh:
        return int(fh.read().rsplit(")", 1)[1].split()[1])


def wait_gone(procs: set[int], timeout: float) -> float:
    t0 = time.monotonic()
    while any(alive(p) for p in procs):
        assert time.monotonic() - t0 < timeout, [p for p in procs if alive(p)]
        time.sleep(0.01)
    return time.monotonic() - t0


def test_workers_die_with_a_sigkilled_emulator(start_emulator) -> None:  # type: ignore[no-untyped-def]
    emu = start_emulator(backends=BACKEND, lanes="1")
    assert EmulatorReader(emu.url, emu.api_key).wait_warm(WARM_TIMEOUT)
    _, procs = start_long_job(emu)
    emu.proc.kill()
    emu.proc.wait(timeout=10)
    took = wait_gone(procs, GONE_WITHIN)
    print(f"\nSIGKILL -> all {len(procs)} worker processes gone: {took:.3f} s", file=sys.stderr)


def test_sigterm_during_a_simulation_exits_promptly(start_emulator) -> None:  # type: ignore[no-untyped-def]
    emu = start_emulator(backends=BACKEND, lanes="1")
    assert EmulatorReader(emu.url, emu.api_key).wait_warm(WARM_TIMEOUT)
    _, procs = start_long_job(emu)
    t0 = time.monotonic()
    emu.proc.send_signal(signal.SIGTERM)
    assert emu.proc.wait(timeout=15) == 0
    took = wait_gone(procs, GONE_WITHIN)
    print(f"\nSIGTERM -> exit and workers gone: {time.monotonic() - t0:.3f} s "
          f"(workers {took:.3f} s after exit)", file=sys.stderr)  # fmt: skip
