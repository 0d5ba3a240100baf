"""The environment that points an unmodified qiskit-ibm-runtime client at one of our endpoints.

Why each variable (checked against qiskit-ibm-runtime 0.51's source, see DESIGN.md):
- QISKIT_IBM_URL must contain the string ``experimental``: only then does the client use it as
  the Runtime API base verbatim instead of deriving ``{scheme}://quantum.{hostname}/api/v1``
  (which would drop our port). Our servers therefore also serve the Runtime API under
  ``/experimental/api/v1``.
- IAM_URL sends the client's API-key exchange (``POST {IAM_URL}/identity/token``) to us.
- QISKIT_FUNCTIONS_EXPERIMENTAL makes the client use the configured instance as is instead
  of asking IBM Cloud's Global Search service for the account's instances.

IBM's QRMI (``qrmi`` 0.26, the client layer of IBM's spank-plugins) reads its own variables,
per resource ``{name}`` (checked against its source, ``src/ibm/quantum_compute_service.rs``,
and spank_qrmi.c, which fills them with the centre's real API key; we give the per-job token):
- ``QRMI_JOB_QPU_RESOURCES`` / ``QRMI_JOB_QPU_TYPES``: the job's resources and their types
  (``QRMIService()`` builds one ``QuantumResource`` per name from these).
- ``{name}_QRMI_IBM_QCS_ENDPOINT``: QRMI appends ``/jobs``, ``/sessions``... to it directly,
  so it is the Runtime API base (``/api/v1``, the real service's prefix).
- ``{name}_QRMI_IBM_QCS_IAM_ENDPOINT``: QRMI posts the key to ``{it}/identity/token``.
- ``{name}_QRMI_IBM_QCS_IAM_APIKEY``: the per-job token, never the vendor key.
- ``{name}_QRMI_IBM_QCS_SERVICE_CRN``: sent as ``Service-CRN``.
- ``{name}_QRMI_JOB_TIMEOUT_SECONDS``: sent as each job's ``cost``; spank_qrmi sets the Slurm
  time limit, we set the time the job has left (the proxy clamps ``cost`` to that anyway).
"""

from __future__ import annotations

from qproxy.runtime_api import CLIENT_RUNTIME_PREFIX, RUNTIME_PREFIX

# Names the Slurm task-init hook overrides in every task (whatever the user set).
CLIENT_ENV_NAMES = (
    "QISKIT_IBM_URL",
    "QISKIT_IBM_TOKEN",
    "QISKIT_IBM_INSTANCE",
    "QISKIT_IBM_CHANNEL",
    "IAM_URL",
    "QISKIT_FUNCTIONS_EXPERIMENTAL",
)


def client_env(base_url: str, token: str, instance: str) -> dict[str, str]:
    """Environment for ``QiskitRuntimeService()`` with no arguments.

    ``base_url`` is the server root, e.g. ``http://127.0.0.1:8290``.
    """
    base_url = base_url.rstrip("/")
    return {
        "QISKIT_IBM_URL": base_url + CLIENT_RUNTIME_PREFIX,
        "QISKIT_IBM_TOKEN": token,
        "QISKIT_IBM_INSTANCE": instance,
        "QISKIT_IBM_CHANNEL": "ibm_quantum_platform",
        "IAM_URL": base_url,
        "QISKIT_FUNCTIONS_EXPERIMENTAL": "1",
    }


# QRMI's name for a Qiskit Runtime service resource (qrmi.ResourceType.IBMQuantumComputeService).
QRMI_RESOURCE_TYPE = "ibm-quantum-compute-service"
QRMI_RESOURCES = "QRMI_JOB_QPU_RESOURCES"
QRMI_TYPES = "QRMI_JOB_QPU_TYPES"
_QRMI_SUFFIXES = (
    "_QRMI_IBM_QCS_ENDPOINT",
    "_QRMI_IBM_QCS_IAM_ENDPOINT",
    "_QRMI_IBM_QCS_IAM_APIKEY",
    "_QRMI_IBM_QCS_SERVICE_CRN",
    "_QRMI_JOB_TIMEOUT_SECONDS",
)


def qrmi_name_ok(resource: str) -> bool:
    """Whether ``{resource}_QRMI_...`` is an environment name (letters, digits, ``_``): the
    SPANK plugin sets no other names, and spank_qrmi has the same limit."""
    return resource.isascii() and resource.isidentifier()


def qrmi_env_names(resource: str) -> tuple[str, ...]:
    """Every QRMI name task init sets (overriding the user's) for a job on ``resource``."""
    return (QRMI_RESOURCES, QRMI_TYPES, *(resource + s for s in _QRMI_SUFFIXES))


def qrmi_env(resource: str, client: dict[str, str], timeout_seconds: int | None) -> dict[str, str]:
    """QRMI's environment for ``resource``, from the job's :func:`client_env` (same token,
    same proxy). ``timeout_seconds`` None (no Slurm time limit): no per-job ``cost``. A
    resource whose name cannot prefix an environment name (``-``, ``.``) gets none."""
    if not qrmi_name_ok(resource):
        return {}
    root = client["IAM_URL"].rstrip("/")
    env = {
        QRMI_RESOURCES: resource,
        QRMI_TYPES: QRMI_RESOURCE_TYPE,
        resource + "_QRMI_IBM_QCS_ENDPOINT": root + RUNTIME_PREFIX,
        resource + "_QRMI_IBM_QCS_IAM_ENDPOINT": root,
        resource + "_QRMI_IBM_QCS_IAM_APIKEY": client["QISKIT_IBM_TOKEN"],
        resource + "_QRMI_IBM_QCS_SERVICE_CRN": client["QISKIT_IBM_INSTANCE"],
    }
    if timeout_seconds is not None:
        env[resource + "_QRMI_JOB_TIMEOUT_SECONDS"] = str(max(1, timeout_seconds))
    return env
