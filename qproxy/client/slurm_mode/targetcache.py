"""The device-target cache of Slurm mode: ``{workdir}/.targets/<backend>.json``.

A primitive job writes the backend's configuration and properties (the Runtime API's own
documents) there; the client rebuilds the Target from them with qiskit-ibm-runtime's own
converter. JSON, not pickle: the work directory may be shared (a project directory), and
unpickling a file another user planted there runs their code as the reader. The reader also
takes the file only if the reader's own uid owns it and the file and its directory are not
writable by anybody else. Rebuilding FakeFez's 156-qubit target from JSON: ~0.15 s.

The writer holds the same rule for the directory (opened without following a symlink, then
checked by its descriptor) and creates its temporary file under a random name with
O_EXCL|O_NOFOLLOW inside it: before, the name was predictable (``.<backend>.json.<pid>.tmp``)
and opened with O_CREAT|O_TRUNC, so a ``.targets`` directory planted by another user in a
shared work directory, with symlinks at the names the next pids would use, made the job
truncate and overwrite any file the job's user can write.
"""

from __future__ import annotations

import datetime
import json
import os
import secrets
import stat
from pathlib import Path
from typing import Any

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
    data = json.dumps(doc, default=_jsonable).encode()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(dfd)
        if st.st_uid != os.getuid() or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise ValueError(f"{path.parent}: not owned by this user or writable by others; "
                             "the target is not cached")
        tmp = f".{path.name}.{secrets.token_hex(8)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=dfd)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
            os.replace(tmp, path.name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            os.unlink(tmp, dir_fd=dfd)
            raise
    finally:
        os.close(dfd)


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
