"""qproxy: quantum resources for Slurm.

The tree follows the data path: ``qproxy.slurm`` (root hooks the SPANK plugin runs) starts
``qproxy.proxy`` (one job's proxy process), which talks to a vendor through
``qproxy.upstream``; ``qproxy.node`` holds the root-side facilities every side uses (audit,
ledger, process identity, ports, spare pool); ``qproxy.client`` runs in the user's job;
``qproxy.emulator`` is the local QPU, apart. The import rule (layers, no cycles):
tests/unit/test_imports.py. The proxy side must never import qiskit: it runs once per job and has to
start fast and stay small. See docs/architecture.md.
"""

__version__ = "0.1.0"
