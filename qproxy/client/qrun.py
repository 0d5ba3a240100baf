"""`qrun sample|estimate PAYLOAD OUTPUT`: run a payload of PUBs on the job's QPU.

Uses only the QISKIT_IBM_* environment Slurm put in the task (so it goes through the job's
proxy). Backend: the payload's ``backend``, else $QPU_BACKEND, else the only one the service
lists. Writes the PrimitiveResult (RuntimeEncoder JSON) atomically, so OUTPUT exists only on
success; any failure is one line on stderr and a non-zero exit.

Progress (queued / running / done, queue position, elapsed time) goes to stderr when stderr
is a terminal, or with ``--progress``; ``--no-progress`` silences it. Not by default in batch
jobs: their stderr is the job's output file, which should only get what the user asked for.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from qproxy.client.payload import KINDS, atomic_write, read_payload


class QrunError(Exception):
    """A user-facing failure: printed as one line."""


def _pubs(doc: dict[str, Any], kind: str) -> list[Any]:
    from qiskit.primitives.containers.estimator_pub import EstimatorPub
    from qiskit.primitives.containers.sampler_pub import SamplerPub

    pubs = doc.get("pubs")
    if not isinstance(pubs, list) or not pubs:
        raise QrunError("payload has no 'pubs' (a non-empty list)")
    coerce = SamplerPub.coerce if kind == "sample" else EstimatorPub.coerce
    out = []
    for i, pub in enumerate(pubs):
        pub = tuple(pub) if isinstance(pub, list) else pub
        try:
            out.append(coerce(pub))
        except Exception as exc:  # noqa: BLE001 - qiskit raises various types
            raise QrunError(f"pub {i} is not a valid {kind} PUB: {exc}") from None
    return out


def _backend(service: Any, doc: dict[str, Any]) -> Any:
    name = doc.get("backend") or os.environ.get("QPU_BACKEND")
    if not name:
        names = [b.name for b in service.backends()]
        if len(names) != 1:
            raise QrunError(f"no backend given and the service lists {names}; set 'backend'")
        name = names[0]
    try:
        return service.backend(name)
    except Exception as exc:  # noqa: BLE001
        raise QrunError(f"backend {name!r} is not available: {_short(exc)}") from None


def _short(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:500] or type(exc).__name__


def _isa(pubs: list[Any], backend: Any, kind: str) -> list[Any]:
    from qiskit.transpiler import generate_preset_pass_manager

    pm = generate_preset_pass_manager(optimization_level=1, backend=backend)
    out: list[Any] = []
    for pub in pubs:
        circuit = pm.run(pub.circuit)
        if kind == "sample":
            out.append((circuit, pub.parameter_values, pub.shots))
        else:
            obs = pub.observables.apply_layout(circuit.layout)
            out.append((circuit, obs, pub.parameter_values, pub.precision))
    return out


def run(kind: str, payload: Path, output: Path, progress: bool = False) -> None:
    try:
        doc = read_payload(payload)
    except (OSError, ValueError) as exc:
        raise QrunError(f"cannot read payload {payload}: {_short(exc)}") from None
    if doc.get("kind", kind) != kind:
        raise QrunError(f"payload is a {doc['kind']!r} payload, not {kind!r}")
    pubs = _pubs(doc, kind)
    options = doc.get("options") or {}
    if not isinstance(options, dict):
        raise QrunError("payload 'options' must be an object")

    from qiskit_ibm_runtime import EstimatorV2, QiskitRuntimeService, SamplerV2
    from qiskit_ibm_runtime.utils.json import RuntimeEncoder

    try:
        service = QiskitRuntimeService()
    except Exception as exc:  # noqa: BLE001
        raise QrunError(f"cannot connect to the QPU service: {_short(exc)}") from None
    backend = _backend(service, doc)
    try:
        if doc.get("transpile", True):
            pubs = _isa(pubs, backend, kind)
        if kind == "sample":
            job = SamplerV2(mode=backend, options=options).run(pubs, shots=doc.get("shots"))
        else:
            job = EstimatorV2(mode=backend, options=options).run(
                pubs, precision=doc.get("precision")
            )
        if progress:
            from qproxy.client.progress import Progress, wait

            result = wait(job, Progress(sys.stderr, live=sys.stderr.isatty()))
        else:
            result = job.result()
    except Exception as exc:  # noqa: BLE001
        raise QrunError(f"{kind} failed: {_short(exc)}") from None
    atomic_write(output, json.dumps(result, cls=RuntimeEncoder).encode())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qrun", description=__doc__)
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("payload", type=Path)
    parser.add_argument("output", type=Path)
    shown = parser.add_mutually_exclusive_group()
    shown.add_argument("--progress", action="store_true", default=None,
                       help="show progress on stderr (default: only when it is a terminal)")
    shown.add_argument("--no-progress", dest="progress", action="store_false")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    warnings.simplefilter("ignore")
    logging.getLogger("qiskit_ibm_runtime").setLevel(logging.CRITICAL)
    try:
        run(args.kind, args.payload, args.output, progress)
    except QrunError as exc:
        print(f"qrun: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("qrun: interrupted", file=sys.stderr)
        return 130
    print(f"qrun: wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
