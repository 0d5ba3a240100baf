#!/bin/bash
# Step 2 (quantum): run the payload on one lane of ibm_fez.
#SBATCH --job-name=wf-quantum
#SBATCH --gres=qpu:1
#SBATCH --q_backend=ibm_fez
#SBATCH --time=00:10:00
set -euo pipefail
srun qrun sample payload.json result.json
