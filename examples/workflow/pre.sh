#!/bin/bash
# Step 1 (classical, no QPU): write the payload.
#SBATCH --job-name=wf-pre
#SBATCH --time=00:05:00
set -euo pipefail
python3 preprocess.py payload.json 3
