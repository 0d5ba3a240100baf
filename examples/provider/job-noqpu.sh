#!/bin/bash
# The same program in a job without a QPU lane (mode "slurm"): each run() is its own short
# job asking --gres=qpu:1 --q_backend=$QPU_BACKEND, so the lane is free between calls.
#SBATCH --job-name=provider-noqpu
#SBATCH --time=00:15:00
set -euo pipefail
export QPU_BACKEND=ibm_fez
python3 program.py
