#!/bin/bash
# Example 5: the primitive example on an on-prem IBM system (the centre's ibm_onprem resource,
# an upstream of kind ibm-quantum-system). The job's code is the same as on the cloud: the
# job's proxy speaks the Runtime API to it and translates for the system (params through the
# centre's S3 bucket, Queued while the system's lanes are busy). Submit from a copy of the
# whole examples/ directory: the payload and the report are primitive/'s.
#SBATCH --job-name=qpu-onprem
#SBATCH --licenses=ibm_onprem:1
#SBATCH --q_backend=ibm_onprem
#SBATCH --time=00:10:00
set -euo pipefail
echo "QPU: $QPU_BACKEND ($QPU_LANES lane(s)) via $QISKIT_IBM_URL"
python3 ../primitive/make_payload.py
srun qrun sample sample.json sample-result.json
srun qrun estimate estimate.json estimate-result.json
python3 ../primitive/show.py sample-result.json estimate-result.json
