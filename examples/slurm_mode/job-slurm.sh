#!/bin/bash
# Mode 2 (slurm primitives): the program runs without a QPU lane; each estimator call is its
# own short job (--gres=qpu:1 --q_backend=ibm_fez), submitted from here with sbatch.
#SBATCH --job-name=vqe-slurm
#SBATCH --time=00:15:00
set -euo pipefail
export PYTHONWARNINGS=ignore QPU_MODE=slurm QPU_BACKEND=ibm_fez
python3 vqe.py
