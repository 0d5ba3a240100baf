"""One Slurm job's proxy process (``qproxy serve``): the app factory, the job-facing Runtime
API routes, ``policy/`` (one module per policy), ``relay/`` (a multi-node job's relay), the
process skeleton and start order, and the spare that forks jobs' proxies. The node facilities
it uses (audit chain, ledger, ports) are ``qproxy.node``; the vendor client ``qproxy.upstream``.

Never imports qiskit and never imports ``qproxy.slurm`` or ``qproxy.admin``: the Slurm side
starts and stops this process, not the other way round (tests/unit/test_imports.py).
"""
