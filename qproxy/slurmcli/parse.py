"""The value shapes each Slurm version prints, read into one form (each checked on Debian's
22.05.8, 24.11.5 and 26.05.x):

- ``squeue --json`` / ``scontrol --json``: from data_parser v0.0.40 on, ``job_state`` is a
  list (``["RUNNING"]``) and times are ``{"set", "infinite", "number"}`` objects, where 22.05
  has a string and an integer (:func:`state_word`, :func:`number`).
- ``scontrol --json`` (24.11+): ``exit_code`` is
  ``{"status": [...], "return_code": {...}, "signal": {"id": {...}, "name"}}``
  (:func:`exit_code`).
- GRES is spelt ``gres:qpu:2`` (22.05 text), ``gres/qpu:2`` (24.11+ text), ``gres/qpu=2``
  (TRES), ``qpu(CNT:2)`` / ``qpu:2(IDX:0-1)`` (gres_detail); licences ``ibm_fez:2,x`` or
  ``(null)`` (:func:`gres_qpu`, :func:`parse_licenses`).

A whole job becomes a ``JobRecord`` in :mod:`qproxy.slurmcli.record`.
"""

from __future__ import annotations

import math
import re
from typing import Any


def number(value: Any) -> float | None:
    """A JSON number of any version: ``N`` (22.05) or ``{"set", "infinite", "number"}``
    (v0.0.40+). None when unset; ``inf`` when infinite."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, dict):
        if value.get("infinite"):
            return math.inf
        if value.get("set") is False:
            return None
        return number(value.get("number"))
    return None


def state_word(value: Any) -> str:
    """``"RUNNING"``, ``["RUNNING", "COMPLETING"]`` or ``"CANCELLED by 0"`` -> the base state."""
    if isinstance(value, list):
        value = value[0] if value else ""
    return str(value or "").split()[0].upper() if value else ""


def exit_code(value: Any) -> str:
    """``"RC:SIGNAL"`` from 22.05's integer / string or 24.11's exit-code object."""
    if isinstance(value, dict):
        rc = number(value.get("return_code"))
        signal = value.get("signal")
        sig = number(signal.get("id")) if isinstance(signal, dict) else None
        rc_s = "" if rc is None or math.isinf(rc) else str(int(rc))
        return f"{rc_s}:{int(sig) if sig is not None and not math.isinf(sig) else 0}" if rc_s \
            else ""
    if isinstance(value, bool) or value is None:
        return ""
    if isinstance(value, int):  # 22.05's squeue --json: the return code alone
        return f"{value}:0"
    return str(value)


def parse_licenses(text: str) -> dict[str, int]:
    """``ibm_fez:2,ibm_torino`` -> {"ibm_fez": 2, "ibm_torino": 1}; ``(null)`` -> {}."""
    out: dict[str, int] = {}
    for item in (text or "").split(","):
        name, _, count = item.strip().partition(":")
        if name and name != "(null)":
            try:
                out[name] = out.get(name, 0) + int(count or 1)
            except ValueError:
                continue
    return out


_GRES = re.compile(r"(?:^|[,\s=])(?:gres[:/])?qpu(?::[^:,()\s=]+)?[:(=](?:CNT:)?(\d+)")


def gres_qpu(*texts: str) -> int:
    """The qpu count in the first GRES/TRES string that has one (``gres:qpu:2``,
    ``gres/qpu:2``, ``gres/qpu=2``, ``qpu(CNT:2)``, ``qpu:2(IDX:0-1)``, ``gres:qpu:fez:2``)."""
    for text in texts:
        m = _GRES.search(text or "")
        if m:
            return int(m.group(1))
    return 0


def gres_lanes(job: dict[str, Any]) -> int:
    """qpu GRES of a JSON job: allocated (``gres_detail``) or else requested (``tres_per_*``)."""
    return gres_qpu(*(str(d) for d in job.get("gres_detail") or []),
                    *(str(job.get(k) or "") for k in ("tres_per_node", "tres_per_job",
                                                      "tres_per_task", "tres_per_socket")))


def jobs_of(doc: Any) -> list[dict[str, Any]]:
    """The job objects of a ``--json`` answer (anything else is ignored)."""
    jobs = doc.get("jobs") if isinstance(doc, dict) else None
    return [j for j in jobs if isinstance(j, dict)] if isinstance(jobs, list) else []
