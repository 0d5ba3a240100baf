"""Classical postprocessing: read qrun's result, report the GHZ fidelity proxy."""

import sys

from qproxy.client.payload import read_result

result = read_result(sys.argv[1])
counts = result[0].data.meas.get_counts()
shots = sum(counts.values())
n = len(next(iter(counts)))
good = counts.get("0" * n, 0) + counts.get("1" * n, 0)
print(f"postprocess: {shots} shots, P(all equal) = {good / shots:.3f}")
top = dict(sorted(counts.items(), key=lambda kv: -kv[1])[:4])
print(f"postprocess: top outcomes {top}")
