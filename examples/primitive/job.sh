#!/bin/bash
# Example 1: a primitive job. Slurm gives the job one lane of ibm_fez; the SPANK plugin starts
# the job's proxy and puts QISKIT_IBM_* (a per-job token, never the centre's key) in the env.
#SBATCH --job-name=qpu-primitive
#SBATCH --gres=qpu:1
#SBATCH --q_backend=ibm_fez
#SBATCH --time=00:10:00
set -euo pipefail
echo "QPU: $QPU_BACKEND ($QPU_LANES lane(s)) via $QISKIT_IBM_URL"
python3 make_payload.py
srun qrun sample sample.json sample-result.json
srun qrun estimate estimate.json estimate-result.json
python3 show.py sample-result.json estimate-result.json
