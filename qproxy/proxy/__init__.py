"""One Slurm job's proxy process (``qproxy serve``): the app factory, the job-facing Runtime
API routes, ``policy/`` (one module per policy), ``upstream/`` (one module per vendor behind
one seam), the audit log, the ledger and leftover cleanup.

Never imports qiskit and never imports ``qproxy.slurm``: the Slurm side starts and stops this
process, not the other way round.
"""
