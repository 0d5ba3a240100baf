#!/bin/bash
# Step 3 (classical, no QPU): read the result.
#SBATCH --job-name=wf-post
#SBATCH --time=00:05:00
set -euo pipefail
python3 postprocess.py result.json
