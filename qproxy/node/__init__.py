"""Root-side facilities of a node that every side uses -- the Slurm hooks, a job's proxy,
the admin commands: the audit chain and the usage log, which process is a job's proxy (the
PID-reuse guard), a job's ledger of upstream work, the privileged ports and the owner of a
loopback socket, the metrics files, and the spare pool's files and claim protocol.

Imports only the base modules (``qproxy.files``, ``records``, ``config``, ``secrets``...):
never ``qproxy.upstream``, ``proxy``, ``slurm`` or ``admin`` (tests/unit/test_imports.py).
"""
