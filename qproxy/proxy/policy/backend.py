"""Backend policy: the job sees and may use only the QPU Slurm gave it.

The job knows the device by the centre's *resource* name (``--q_backend=ibm_fez``); upstream it
may have another name (``fake_fez``). Names are rewritten in both directions so the client
never notices, and anything naming another backend is refused with 403.
"""

from __future__ import annotations

from typing import Any

from qproxy.proxy.policy.errors import PolicyError


class BackendPolicy:
    def __init__(self, local: str, upstream: str) -> None:
        self.local = local
        self.upstream = upstream

    def to_upstream(self, name: Any) -> str:
        """Map a backend name the job sent to the upstream name, or refuse it."""
        if name == self.local:
            return self.upstream
        raise PolicyError(
            403,
            f"backend {name!r} is not allocated to this Slurm job; "
            f"it may only use {self.local!r} (requested with --q_backend)",
        )

    def to_local(self, name: Any) -> Any:
        return self.local if name == self.upstream else name

    def filter_devices(self, doc: Any) -> dict[str, Any]:
        """Backends list: keep only our device, under its local name."""
        devices = doc.get("devices", []) if isinstance(doc, dict) else []
        kept = []
        for dev in devices:
            name = dev.get("name") if isinstance(dev, dict) else dev
            if name != self.upstream:
                continue
            if isinstance(dev, dict):
                dev = {**dev, "name": self.local}
            else:
                dev = self.local
            kept.append(dev)
        out = dict(doc) if isinstance(doc, dict) else {}
        out["devices"] = kept
        return out

    def rewrite_doc(self, doc: Any) -> Any:
        """configuration / properties / status documents carry ``backend_name``."""
        if isinstance(doc, dict):
            for key in ("backend_name", "name"):
                if doc.get(key) == self.upstream:
                    doc[key] = self.local
        return doc

    def rewrite_job(self, job: Any) -> Any:
        """Job and session documents carry ``backend`` / ``backend_name``."""
        if isinstance(job, dict):
            for key in ("backend", "backend_name"):
                if key in job:
                    job[key] = self.to_local(job[key])
        return job
