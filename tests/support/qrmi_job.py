"""Job code as IBM's QRMI documents it (examples/qiskit_primitives/ibm in qiskit-community/qrmi),
unmodified: everything comes from the QRMI_* environment task init sets. Run by a QRMI
venv's python (no qproxy import); prints one JSON line of what it saw.

argv[1]: a scratch directory for task_runner's input and output files."""

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

warnings.simplefilter("ignore")

from qiskit import QuantumCircuit, qasm3  # noqa: E402
from qiskit.quantum_info import SparsePauliOp  # noqa: E402
from qiskit.transpiler import generate_preset_pass_manager  # noqa: E402
from qrmi import ResourceType  # noqa: E402
from qrmi.primitives import QRMIService  # noqa: E402
from qrmi.primitives.ibm import EstimatorV2, SamplerV2, get_target  # noqa: E402

scratch = Path(sys.argv[1])
service = QRMIService()
resources = service.resources()
qrmi = resources[0]
out: dict = {
    "resources": [r.resource_id() for r in resources],
    "type_ok": qrmi.resource_type() == ResourceType.IBMQuantumComputeService,
    "accessible": qrmi.is_accessible(),
}
token = qrmi.acquire()  # opens a Runtime session
out["session"] = token
out["metadata"] = qrmi.metadata()

target = get_target(qrmi)
out["num_qubits"] = target.num_qubits
pm = generate_preset_pass_manager(optimization_level=1, target=target)
bell = QuantumCircuit(2)
bell.h(0)
bell.cx(0, 1)
meas = pm.run(bell.measure_all(inplace=False))
result = SamplerV2(qrmi, options={"default_shots": 1000}).run([meas]).result()
out["counts"] = result[0].data.meas.get_counts()

isa = pm.run(bell)
obs = SparsePauliOp("ZZ").apply_layout(isa.layout)
ev = EstimatorV2(qrmi).run([(isa, obs)]).result()
out["ev"] = float(ev[0].data.evs)

# task_runner: the CLI that spank-plugins' users run under srun, with a primitive input file.
params = {"pubs": [[qasm3.dumps(meas), None, 200]], "shots": 200,
          "version": 2, "support_qiskit": True, "options": {}}
(scratch / "input.json").write_text(json.dumps({"program_id": "sampler", "parameters": params}))
runner = Path(sys.executable).with_name("task_runner")
r = subprocess.run([str(runner), qrmi.resource_id(), str(scratch / "input.json"),
                    str(scratch / "output.json")], capture_output=True, text=True, timeout=300)
out["runner_rc"] = r.returncode
out["runner_err"] = (r.stdout + r.stderr)[-2000:]
if r.returncode == 0 and (scratch / "output.json").exists():
    try:  # where qrmi.primitives.runtime_job_v2 finds it, by client release
        from qiskit_ibm_runtime.decoders.result_decoder import ResultDecoder
    except ImportError:
        from qiskit_ibm_runtime.utils.result_decoder import ResultDecoder

    decoded = ResultDecoder.decode((scratch / "output.json").read_text())
    out["runner_counts"] = decoded[0].data.meas.get_counts()

qrmi.release(token)
out["released"] = True
out["env_names"] = sorted(k for k in os.environ if "QRMI" in k)
print(json.dumps(out))
