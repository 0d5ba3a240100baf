#!/bin/bash
# Example 3: a workflow. Classical preprocessing -> quantum job -> classical postprocessing,
# chained with --dependency=afterok; the QPU is held only while step 2 runs.
# Usage (from this directory): ./submit.sh [--wait]   prints the three job ids.
set -euo pipefail
cd "$(dirname "$0")"
pre=$(sbatch --parsable -o pre.out pre.sh)
quantum=$(sbatch --parsable -o quantum.out --dependency=afterok:"$pre" quantum.sh)
post=$(sbatch --parsable -o post.out --dependency=afterok:"$quantum" "$@" post.sh)
echo "$pre $quantum $post"
