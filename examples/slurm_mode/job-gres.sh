#!/bin/bash
# Mode 1 (gres-like): the whole program holds one lane of ibm_fez while it runs.
#SBATCH --job-name=vqe-gres
#SBATCH --gres=qpu:1
#SBATCH --q_backend=ibm_fez
#SBATCH --time=00:15:00
set -euo pipefail
export PYTHONWARNINGS=ignore QPU_MODE=gres
python3 vqe.py
