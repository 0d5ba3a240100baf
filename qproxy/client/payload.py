"""The qrun payload format (see docs/qrun.md): write payloads, read results.

A payload is the client's own RuntimeEncoder JSON of::

    {"kind": "sample" | "estimate", "backend": optional str, "pubs": [...],
     "shots": int (sample), "precision": float (estimate), "options": {...},
     "transpile": bool (default true)}

so circuits travel as QPY and observables/arrays in the encoding IBM's service already
accepts — no new serialisation to get wrong. Imports qiskit lazily (client side only).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from qproxy.files import atomic_write as _atomic_write

KINDS = ("sample", "estimate")


def write_payload(
    path: str | Path,
    pubs: list[Any],
    kind: str,
    *,
    shots: int | None = None,
    precision: float | None = None,
    backend: str | None = None,
    options: dict[str, Any] | None = None,
    transpile: bool = True,
) -> Path:
    from qiskit_ibm_runtime.utils.json import RuntimeEncoder

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    doc: dict[str, Any] = {"kind": kind, "pubs": list(pubs), "transpile": transpile}
    if backend:
        doc["backend"] = backend
    if shots is not None:
        doc["shots"] = shots
    if precision is not None:
        doc["precision"] = precision
    if options:
        doc["options"] = options
    path = Path(path)
    atomic_write(path, json.dumps(doc, cls=RuntimeEncoder).encode())
    return path


def read_payload(path: str | Path) -> dict[str, Any]:
    from qiskit_ibm_runtime.utils.json import RuntimeDecoder

    doc = json.loads(Path(path).read_text(), cls=RuntimeDecoder)
    if not isinstance(doc, dict):
        raise ValueError("payload must be a JSON object")
    return doc


def read_result(path: str | Path) -> Any:
    """The PrimitiveResult qrun wrote."""
    from qiskit_ibm_runtime.utils.json import RuntimeDecoder

    return json.loads(Path(path).read_text(), cls=RuntimeDecoder)


def atomic_write(path: Path, data: bytes) -> None:
    """The user's own file, with the user's umask (not private): temp file + rename."""
    _atomic_write(path, data, 0o666)
