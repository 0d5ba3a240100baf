#!/bin/bash
# The seed's job: one lane of ibm_fez for the whole hybrid program (mode "job").
#SBATCH --job-name=qpu-provider
#SBATCH --gres=qpu:1
#SBATCH --q_backend=ibm_fez
#SBATCH --time=00:15:00
set -euo pipefail
srun python3 program.py
