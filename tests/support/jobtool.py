"""Run INSIDE test jobs (as the job user): small probes of the job's QPU environment.
Stdlib only except `busy`, which uses the unmodified qiskit-ibm-runtime client."""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request


def _request(
    method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def iam(base: str, apikey: str) -> tuple[int, str]:
    body = urllib.parse.urlencode(
        {"grant_type": "urn:ibm:params:oauth:grant-type:apikey", "apikey": apikey}
    ).encode()
    code, raw = _request(
        "POST",
        base.rstrip("/") + "/identity/token",
        body,
        {"Content-Type": "application/x-www-form-urlencoded"},
    )
    token = json.loads(raw).get("access_token", "") if code == 200 else ""
    return code, token


MAX_FILES = 200_000


def readable(out: str, roots: list[str]) -> None:
    """List the regular files under ``roots`` this user can read (at most MAX_FILES) into
    ``OUT`` (the test, as root, scans them afterwards: the job never holds the key to search
    for), and copy what it can read of every process's environ and cmdline into ``OUT.proc``
    now (processes are gone by the time the test looks)."""
    files: list[str] = []
    for root in roots:
        for top, _dirs, names in os.walk(root, onerror=lambda _e: None):
            for name in names:
                path = os.path.join(top, name)
                if len(files) < MAX_FILES and os.path.isfile(path) and not os.path.islink(path) \
                        and os.access(path, os.R_OK):
                    files.append(path)
    with open(out + ".proc", "wb") as proc:
        for pid in os.listdir("/proc"):
            for what in ("environ", "cmdline"):
                try:
                    with open(f"/proc/{pid}/{what}", "rb") as fh:
                        proc.write(fh.read() + b"\n")
                except OSError:
                    continue
    with open(out + ".tmp", "w") as fh:
        json.dump(files, fh)
    os.replace(out + ".tmp", out)


def main(argv: list[str]) -> int:
    cmd = argv[0]
    env = os.environ
    if cmd == "env-dump":  # env-dump FILE
        with open(argv[1] + ".tmp", "w") as fh:
            json.dump(dict(env), fh)
        os.replace(argv[1] + ".tmp", argv[1])
    elif cmd == "iam":  # iam URL APIKEY -> HTTP status of the token exchange
        print("iam", iam(argv[1], argv[2])[0])
    elif cmd == "other-backend":  # other-backend NAME -> statuses with our own token
        code, token = iam(env["IAM_URL"], env["QISKIT_IBM_TOKEN"])
        assert code == 200, code
        hdr = {
            "Authorization": f"Bearer {token}",
            "Service-CRN": env["QISKIT_IBM_INSTANCE"],
            "Content-Type": "application/json",
        }
        base = env["QISKIT_IBM_URL"].rstrip("/")
        body = json.dumps(
            {"program_id": "sampler", "backend": argv[1], "params": {"pubs": [], "version": 2}}
        ).encode()
        print("create", _request("POST", base + "/jobs", body, hdr)[0])
        print("config", _request("GET", f"{base}/backends/{argv[1]}/configuration", None, hdr)[0])
    elif cmd == "probe":  # probe N: the job's own token exchange + N API calls, timed
        statuses: list[int | str] = []
        times: list[float] = []
        token = ""
        for i in range(int(argv[1]) + 1):
            t0 = time.monotonic()
            try:
                if i == 0:
                    code, token = iam(env["IAM_URL"], env["QISKIT_IBM_TOKEN"])
                else:
                    hdr = {"Authorization": f"Bearer {token}",
                           "Service-CRN": env["QISKIT_IBM_INSTANCE"]}
                    code = _request("GET", env["QISKIT_IBM_URL"].rstrip("/") + "/backends",
                                    None, hdr)[0]
                statuses.append(code)
            except urllib.error.URLError as exc:  # the reason: ConnectionRefusedError, ...
                statuses.append(type(exc.reason).__name__)
            except OSError as exc:
                statuses.append(type(exc).__name__)
            times.append(time.monotonic() - t0)
        times.sort()
        print(json.dumps({"statuses": statuses, "p50": times[len(times) // 2],
                          "max": times[-1]}), flush=True)
    elif cmd == "sample-delete":  # run one sampler job, then DELETE it once it is done
        from qiskit import QuantumCircuit
        from qiskit.transpiler import generate_preset_pass_manager
        from qiskit_ibm_runtime import QiskitRuntimeService, SamplerV2

        service = QiskitRuntimeService()
        backend = service.backend(env["QPU_BACKEND"])
        qc = QuantumCircuit(2)
        qc.h(0)
        qc.cx(0, 1)
        qc.measure_all()
        isa = generate_preset_pass_manager(optimization_level=1, backend=backend).run(qc)
        job = SamplerV2(mode=backend).run([isa], shots=4000)
        job.result()
        code, token = iam(env["IAM_URL"], env["QISKIT_IBM_TOKEN"])
        hdr = {"Authorization": f"Bearer {token}", "Service-CRN": env["QISKIT_IBM_INSTANCE"]}
        url = env["QISKIT_IBM_URL"].rstrip("/") + f"/jobs/{job.job_id()}"
        print("delete", _request("DELETE", url, None, hdr)[0], job.job_id(), flush=True)
    elif cmd == "requests":  # requests N: the IAM exchange, N backend lists, one refusal
        code, token = iam(env["IAM_URL"], env["QISKIT_IBM_TOKEN"])
        hdr = {"Authorization": f"Bearer {token}", "Service-CRN": env["QISKIT_IBM_INSTANCE"]}
        base = env["QISKIT_IBM_URL"].rstrip("/")
        codes = [code] + [_request("GET", base + "/backends", None, hdr)[0]
                          for _ in range(int(argv[1]))]
        codes.append(_request("GET", base + "/backends/not_ours/configuration", None, hdr)[0])
        print("codes", *codes)
    elif cmd == "busy":  # busy N: submit N long sampler jobs, print their ids, then wait
        from qiskit import QuantumCircuit
        from qiskit.transpiler import generate_preset_pass_manager
        from qiskit_ibm_runtime import QiskitRuntimeService, SamplerV2

        service = QiskitRuntimeService()
        backend = service.backend(env["QPU_BACKEND"])
        n = 8  # moderate: the emulator serves everybody and must stay responsive
        qc = QuantumCircuit(n)
        qc.h(range(n))
        for layer in range(10):
            for q in range(n - 1):
                qc.cx(q, q + 1)
                qc.rz(0.1 * layer, q + 1)
                qc.sx(q)
        qc.measure_all()
        isa = generate_preset_pass_manager(optimization_level=0, backend=backend).run(qc)
        sampler = SamplerV2(mode=backend)
        for _ in range(int(argv[1])):
            print("upstream-job", sampler.run([isa], shots=20000).job_id(), flush=True)
        time.sleep(3600)
    elif cmd == "readable":  # readable OUT ROOT...: what this user can read, for the test to scan
        readable(argv[1], argv[2:])
    else:
        print(f"unknown command {cmd}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
