"""First primitive job of a backend: cache the device's target for the client, then run qrun.

Why in the same process: the target costs one extra ``QiskitRuntimeService().backend()``
after qrun (imports already paid), and lets later calls transpile on the client and use the
stdlib fast path (fastrun.py) instead of importing qiskit while holding a lane. The target
is written *before* the result, so a client that submits its next call as soon as this result
appears already finds it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from qproxy.client import qrun
from qproxy.client.slurm_mode import targetcache


def main(argv: list[str]) -> int:
    kind, payload, output, target_out = argv
    try:
        from qiskit_ibm_runtime import QiskitRuntimeService

        backend = QiskitRuntimeService().backend(os.environ["QPU_BACKEND"])
        targetcache.write(Path(target_out), backend)
    except Exception as exc:  # noqa: BLE001 - the cache is an optimisation only
        print(f"qrun: note: could not cache the target: {exc}", file=sys.stderr)
    return qrun.main([kind, payload, output])


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
