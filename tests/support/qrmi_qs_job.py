"""IBM's QRMI, unmodified, on its ``ibm-quantum-system`` resource type (the Quantum System
API, S3 in between): everything comes from the environment (QRMI_JOB_QPU_RESOURCES/TYPES and
``{resource}_QRMI_IBM_QS_*``). Run by a QRMI venv's python (no qproxy import); prints one JSON
line of what it saw.

Sampler and estimator through QRMI's own primitives (they start a task, poll its status,
read the result from S3 and delete the job); then the task API directly: status and logs of
a finished task, and stop of a running one (QRMI cancels, then deletes it)."""

import json
import sys
import time
import warnings

warnings.simplefilter("ignore")

from qiskit import QuantumCircuit, qasm3  # noqa: E402
from qiskit.quantum_info import SparsePauliOp  # noqa: E402
from qiskit.transpiler import generate_preset_pass_manager  # noqa: E402
from qrmi import Payload, ResourceType, TaskStatus  # noqa: E402
from qrmi.primitives import QRMIService  # noqa: E402
from qrmi.primitives.ibm import EstimatorV2, SamplerV2, get_target  # noqa: E402

service = QRMIService()
resources = service.resources()
qrmi = resources[0]
out: dict = {
    "resources": [r.resource_id() for r in resources],
    "type_ok": qrmi.resource_type() == ResourceType.IBMQuantumSystem,
    "accessible": qrmi.is_accessible(),
}
token = qrmi.acquire()  # no sessions on this API: a local id

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

params = {"pubs": [[qasm3.dumps(meas), None, 200]], "version": 2, "support_qiskit": True,
          "options": {}}


def start() -> str:
    return qrmi.task_start(Payload.QiskitPrimitive(input=json.dumps(params),
                                                   program_id="sampler"))


# status and logs of a finished task
task = start()
seen = [str(qrmi.task_status(task))]
while qrmi.task_status(task) == TaskStatus.Running:
    time.sleep(0.1)
seen.append(str(qrmi.task_status(task)))
out["task_statuses"] = seen
out["task_logs"] = qrmi.task_logs(task)
out["task_result_len"] = len(qrmi.task_result(task).value)
qrmi.task_stop(task)  # a finished task: deleted
out["finished_task"] = task

# stop of a running task: cancelled, then deleted
running = start()
out["running_status"] = str(qrmi.task_status(running))
qrmi.task_stop(running)
out["stopped_task"] = running

qrmi.release(token)
print(json.dumps(out))
sys.stdout.flush()
