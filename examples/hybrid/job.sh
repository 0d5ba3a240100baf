#!/bin/bash
# Example 2: a hybrid program. An unmodified qiskit-ibm-runtime script; the job's environment
# points the client at this job's proxy (one lane of ibm_fez via the licence mapping).
#SBATCH --job-name=qpu-hybrid
#SBATCH --licenses=ibm_fez:1
#SBATCH --q_backend=ibm_fez
#SBATCH --time=00:15:00
set -euo pipefail
export PYTHONWARNINGS=ignore::DeprecationWarning  # EstimatorV2 is deprecated in 0.50+
srun python3 program.py
