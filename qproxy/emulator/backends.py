"""Emulated devices: qiskit-ibm-runtime's fake device snapshots served as the API serves them.

The fake providers ship the configuration and properties JSON that IBM's API once returned for
the real device (qubit count, coupling map, basis gates, calibration data), so serving those
files verbatim (with the name changed) gives the unmodified client the same ``IBMBackend`` and
``Target`` it would build against the real device. The Aer noise model is derived from the
same snapshot, built once per device (it takes seconds at 156 qubits) and then restricted per
job to the qubits a circuit touches (see :meth:`Device.noise_model_for`).
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import json
import os
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from qiskit.transpiler import Target

DEFAULT_BACKENDS = ("fake_fez", "fake_torino")
# a served name is a URL path segment (/backends/NAME/status) and a Slurm --q_backend value
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_NOISE_CACHE_SIZE = 64


def _fake_backend_class(fake_name: str) -> Any:
    """``fake_fez`` -> ``qiskit_ibm_runtime.fake_provider.FakeFez``."""
    module = importlib.import_module("qiskit_ibm_runtime.fake_provider")
    wanted = fake_name.replace("_", "").lower()
    for attr in dir(module):
        if attr.lower() == wanted:
            cls = getattr(module, attr)
            if isinstance(cls, type) and hasattr(cls, "conf_filename"):
                return cls
    raise ValueError(f"unknown fake backend {fake_name!r}")


@dataclass
class Device:
    """One emulated backend: its API documents, target and (lazily) its noise model."""

    name: str
    fake_name: str
    lanes: int = 1
    # The device's availability as its status endpoints report it, set by the admin endpoint
    # (qproxy/emulator/admin.py): "online", "paused" or "offline", and why.
    availability: str = "online"
    availability_message: str = "available"
    # An active reservation (Quantum System API: ``locked``; new jobs get 423), set by the
    # admin endpoint.
    locked: bool = False
    _fake: Any = field(default=None, repr=False)
    _noise: Any = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _reduced: OrderedDict[tuple[Any, ...], Any] = field(default_factory=OrderedDict, repr=False)

    def __post_init__(self) -> None:
        cls = _fake_backend_class(self.fake_name)
        self._fake = cls()
        with open(os.path.join(cls.dirname, cls.conf_filename)) as fh:
            self.configuration = json.load(fh)
        with open(os.path.join(cls.dirname, cls.props_filename)) as fh:
            self.properties = json.load(fh)
        self.configuration["backend_name"] = self.name
        self.properties["backend_name"] = self.name
        self.num_qubits = int(self.configuration["n_qubits"])
        # The service names each calibration of a device by an id; the client sends it back
        # as ``calibration_id`` (configuration, properties, jobs) and an unknown one is a 404.
        # Ours is fixed by the snapshot the device is served from.
        stamp = f"{self.fake_name}:{self.properties.get('last_update_date', '')}"
        self.calibration_id = hashlib.sha256(stamp.encode()).hexdigest()[:24]

    @property
    def target(self) -> Target:
        return self._fake.target

    @property
    def backend_version(self) -> str:
        return str(self.configuration.get("backend_version", "0.0.0"))

    def noise_model(self) -> Any:
        """The device's full Aer noise model (built once, thread-safe)."""
        with self._lock:
            if self._noise is None:
                from qiskit_aer.noise import NoiseModel

                self._noise = NoiseModel.from_backend(self._fake)
            return self._noise

    def noise_model_for(self, qubits: tuple[int, ...], readout: bool = True) -> Any:
        """The noise model restricted to ``qubits`` (device indices), renumbered 0..k-1.

        Why: simulating a 2-qubit circuit against the 156-qubit model costs seconds; the
        restricted model holds only the errors the simulation can hit.
        """
        key = (qubits, readout)
        with self._lock:
            if key in self._reduced:
                self._reduced.move_to_end(key)
                return self._reduced[key]
        full = self.noise_model()
        from qiskit_aer.noise import NoiseModel
        from qiskit_aer.noise.passes import RelaxationNoisePass

        index = {q: i for i, q in enumerate(qubits)}
        reduced = NoiseModel(basis_gates=sorted(full.basis_gates))
        for name, per_qubits in full._local_quantum_errors.items():
            for qargs, error in per_qubits.items():
                if all(q in index for q in qargs):
                    reduced.add_quantum_error(
                        error, name, [index[q] for q in qargs], warnings=False
                    )
        for name, error in full._default_quantum_errors.items():
            reduced.add_all_qubit_quantum_error(error, name, warnings=False)
        if readout:
            for qargs, error in full._local_readout_errors.items():
                if all(q in index for q in qargs):
                    reduced.add_readout_error(error, [index[q] for q in qargs], warnings=False)
        for noise_pass in full._custom_noise_passes:
            if isinstance(noise_pass, RelaxationNoisePass):
                try:
                    p1s = noise_pass._p1s
                    reduced._custom_noise_passes.append(
                        RelaxationNoisePass(
                            t1s=[float(noise_pass._t1s[q]) for q in qubits],
                            t2s=[float(noise_pass._t2s[q]) for q in qubits],
                            dt=noise_pass._dt,
                            op_types=noise_pass._ops,
                            excited_state_populations=None
                            if p1s is None
                            else [float(p1s[q]) for q in qubits],
                        )
                    )
                except (AttributeError, IndexError, TypeError):
                    pass  # delay noise is a refinement; never fail a job over it
        with self._lock:
            self._reduced[key] = reduced
            while len(self._reduced) > _NOISE_CACHE_SIZE:
                self._reduced.popitem(last=False)
        return reduced

    def readout_p1_given_0(self, qubit: int) -> float:
        """P(read 1 | prepared 0) of a qubit, for qubits that are only measured, never used."""
        for item in self.properties.get("qubits", [])[qubit]:
            if item.get("name") == "prob_meas1_prep0":
                return float(item.get("value", 0.0))
        return 0.0

    def configuration_doc(self) -> dict[str, Any]:
        return copy.deepcopy(self.configuration)

    def properties_doc(self) -> dict[str, Any]:
        return copy.deepcopy(self.properties)

    def device_entry(self, queue_length: int) -> dict[str, Any]:
        """One element of ``GET /backends`` ``{"devices": [...]}``."""
        proc = self.configuration.get("processor_type") or {}
        return {
            "name": self.name,
            "status": {"name": self.availability, "reason": self.availability_message},
            "is_simulator": False,
            "qubits": self.num_qubits,
            # the client reads IBMBackend.physical_qubits from this list, not from the config
            "physical_qubits": self.num_qubits,
            "queue_length": queue_length,
            "wait_time_seconds": {"p50": 0, "p95": 0},
            "processor_type": proc,
            "clops": {"type": "hardware", "value": 0},
            "performance_metrics": {},
            "class": "device",
        }

    def status_doc(self, queue_length: int) -> dict[str, Any]:
        """``GET /backends/{name}/status`` (the client maps state/status/length_queue)."""
        return {
            "backend_name": self.name,
            "state": self.availability == "online",
            "status": "active" if self.availability == "online" else self.availability,
            "message": self.availability_message,
            "length_queue": queue_length,
            "backend_version": self.backend_version,
        }


def parse_backends(spec: str) -> list[tuple[str, str]]:
    """``"fake_fez,ibm_kyiv=fake_kyiv"`` -> ``[("fake_fez", "fake_fez"), ("ibm_kyiv", ...)]``.

    ``NAME=MODEL`` serves the device model MODEL (a ``qiskit_ibm_runtime.fake_provider``
    class) under NAME, e.g. the real device's name so that job scripts written for the real
    service run unchanged; a plain MODEL is served under its own name. Every document the
    API serves for it (configuration, properties, status, ``GET /backends``) carries NAME.
    The model is checked when the device is built (``Device``); this checks the syntax.
    """
    out: list[tuple[str, str]] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        name, eq, model = part.partition("=")
        name, model = name.strip(), (model if eq else name).strip()
        if not _NAME.fullmatch(name):
            raise ValueError(f"--backends: invalid backend name {name!r} in {part!r}")
        if not model:
            raise ValueError(f"--backends: no device model after '=' in {part!r}")
        if name in (n for n, _ in out):
            raise ValueError(f"--backends: backend {name!r} is given twice")
        out.append((name, model))
    if not out:
        raise ValueError("no backends given")
    return out


def parse_lanes(spec: str | None, names: list[str]) -> dict[str, int]:
    """``"2"`` (every backend) or ``"ibm_fez=2,fake_torino=1"`` -> lanes per backend.

    Names are the served names (the left side of ``--backends NAME=MODEL``)."""
    lanes = dict.fromkeys(names, 1)
    if not spec:
        return lanes
    if "=" not in spec:
        n = int(spec)
        if n < 1:
            raise ValueError("lanes must be >= 1")
        return dict.fromkeys(names, n)
    for part in spec.split(","):
        name, _, value = part.partition("=")
        name = name.strip()
        if name not in lanes:
            raise ValueError(
                f"--lanes names unknown backend {name!r} (served: {', '.join(names)}; "
                "use the served name, not the device model)"
            )
        n = int(value)
        if n < 1:
            raise ValueError("lanes must be >= 1")
        lanes[name] = n
    return lanes
