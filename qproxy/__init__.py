"""qproxy: quantum resources for Slurm.

The proxy side of this package (``qproxy.app``, ``qproxy.front``, ``qproxy.policy``,
``qproxy.upstream``, ``qproxy.audit``) must never import qiskit: it runs once per job and has
to start fast and stay small. Only ``qproxy.emulator`` and ``qproxy.qrun`` use qiskit.
"""

__version__ = "0.1.0"
