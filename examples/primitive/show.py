"""Print what qrun wrote: counts of the sample, expectation values of the estimate."""

import sys

from qproxy.client.payload import read_result

sample = read_result(sys.argv[1])
counts = sample[0].data.meas.get_counts()
print("sample counts:", dict(sorted(counts.items(), key=lambda kv: -kv[1])))
estimate = read_result(sys.argv[2])
print("estimate <ZZ>, <XX>:", [round(float(v), 3) for v in estimate[0].data.evs.ravel()])
