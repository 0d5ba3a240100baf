"""The device-target cache of Slurm mode: ``{workdir}/.targets/<backend>.json``.

A primitive job writes the backend's configuration and properties (the Runtime API's own
documents) there; the client rebuilds the Target from them with qiskit-ibm-runtime's own
converter. JSON, not pickle: the work directory may be shared (a project directory), and
unpickling a file another user planted there runs their code as the reader. The reader also
takes the file only if the reader's own uid owns it and the file and its directory are not
writable by anybody else. Rebuilding FakeFez's 156-qubit target from JSON: ~0.15 s.
"""

from __future__ import annotations

import datetime
import json
import os
import stat
from pathlib import Path
from typing import Any

from qproxy.files import atomic_write

SUFFIX = ".json"


def path_for(workdir: Path, backend: str) -> Path:
    return workdir / ".targets" / f"{backend}{SUFFIX}"


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime.datetime | datetime.date):
        return value.isoformat()
    if isinstance(value, complex):
        return [value.real, value.imag]
    raise TypeError(f"not JSON: {type(value).__name__}")


def write(path: Path, backend: Any) -> None:
    """Cache ``backend``'s configuration and properties (0600, private dir)."""
    doc = {"configuration": backend.configuration().to_dict(),
           "properties": backend.properties().to_dict()}
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    atomic_write(path, json.dumps(doc, default=_jsonable))


def trusted(path: Path) -> bool:
    """Owned by us, and neither it nor its directory writable by group or others."""
    uid = os.getuid()
    try:
        for p in (path.parent, path):
            st = p.lstat()
            if st.st_uid != uid or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
                return False
            if p is path and not stat.S_ISREG(st.st_mode):
                return False
    except OSError:
        return False
    return True


def read(path: Path) -> Any:
    """The Target rebuilt from a trusted cache file; raises ValueError when not trusted or
    not a cache file."""
    if not trusted(path):
        raise ValueError(f"{path}: not owned by this user or writable by others")
    from qiskit_ibm_runtime.models import BackendConfiguration, BackendProperties
    from qiskit_ibm_runtime.utils.backend_converter import convert_to_target

    doc = json.loads(path.read_text())
    if not (isinstance(doc, dict) and isinstance(doc.get("configuration"), dict)
            and isinstance(doc.get("properties"), dict)):
        raise ValueError(f"{path}: not a target cache")
    return convert_to_target(BackendConfiguration.from_dict(doc["configuration"]),
                             BackendProperties.from_dict(doc["properties"]))
