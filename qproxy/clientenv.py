"""The environment that points an unmodified qiskit-ibm-runtime client at one of our endpoints.

Why each variable (checked against qiskit-ibm-runtime 0.51's source, see DESIGN.md):
- QISKIT_IBM_URL must contain the string ``experimental``: only then does the client use it as
  the Runtime API base verbatim instead of deriving ``{scheme}://quantum.{hostname}/api/v1``
  (which would drop our port). Our servers therefore also serve the Runtime API under
  ``/experimental/api/v1``.
- IAM_URL sends the client's API-key exchange (``POST {IAM_URL}/identity/token``) to us.
- QISKIT_FUNCTIONS_EXPERIMENTAL makes the client use the configured instance as is instead
  of asking IBM Cloud's Global Search service for the account's instances.
"""

from __future__ import annotations

from qproxy.runtime_api import CLIENT_RUNTIME_PREFIX

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
