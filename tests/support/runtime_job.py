"""A job's qiskit-ibm-runtime code, unmodified: ``QiskitRuntimeService()`` with no arguments
(everything from the environment task init sets), SamplerV2 and EstimatorV2, job.usage(),
logs and tags, a Session, a Batch, a cancel and the job list. Prints one JSON line of what it
saw. No qproxy import: it runs as the job user, in a real Slurm job or beside a proxy.

argv[1]: the QPU resource (the job's --q_backend)."""

import json
import sys
import warnings

warnings.simplefilter("ignore")

from qiskit import QuantumCircuit  # noqa: E402
from qiskit.quantum_info import SparsePauliOp  # noqa: E402
from qiskit.transpiler import generate_preset_pass_manager  # noqa: E402
from qiskit_ibm_runtime import (  # noqa: E402
    Batch,
    EstimatorV2,
    QiskitRuntimeService,
    SamplerV2,
    Session,
)

out: dict = {}
service = QiskitRuntimeService()
out["backends"] = [b.name for b in service.backends()]
backend = service.backend(sys.argv[1])
qc = QuantumCircuit(2)
qc.h(0)
qc.cx(0, 1)
qc.measure_all()
isa = generate_preset_pass_manager(optimization_level=1, backend=backend,
                                   seed_transpiler=1).run(qc)
job = SamplerV2(mode=backend).run([isa], shots=1000)
counts = job.result()[0].data.meas.get_counts()
out["bell"] = (counts.get("00", 0) + counts.get("11", 0)) / 1000
out["usage"] = job.usage()
out["logs"] = isinstance(job.logs(), str)
job.update_tags(["mine"])
out["tags"] = service.job(job.job_id()).tags
est = isa.remove_final_measurements(inplace=False)
obs = SparsePauliOp("ZZ").apply_layout(est.layout)
out["zz"] = float(EstimatorV2(mode=backend).run([(est, obs)]).result()[0].data.evs)
with Session(backend=backend) as session:
    r = SamplerV2(mode=session).run([isa], shots=100).result()
    out["session_shots"] = sum(r[0].data.meas.get_counts().values())
with Batch(backend=backend) as batch:
    jobs = [SamplerV2(mode=batch).run([isa], shots=50) for _ in range(2)]
    out["batch_shots"] = [sum(j.result()[0].data.meas.get_counts().values()) for j in jobs]
try:  # 0.50+: the executor-based primitives (program "executor")
    from qiskit_ibm_runtime.executor_estimator import Estimator
    from qiskit_ibm_runtime.executor_sampler import Sampler
except ImportError:
    pass
else:
    c = Sampler(mode=backend).run([isa], shots=500).result()[0].data.meas.get_counts()
    out["executor_bell"] = (c.get("00", 0) + c.get("11", 0)) / 500
    out["executor_zz"] = float(Estimator(mode=backend).run([(est, obs)]).result()[0].data.evs)
long = SamplerV2(mode=backend).run([isa] * 8, shots=100000)
long.cancel()
out["cancelled"] = str(long.status())
out["listed"] = sorted(j.job_id() for j in service.jobs(limit=50))
print(json.dumps(out))
