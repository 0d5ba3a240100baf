"""Slurm's command line, read in one place: what the root hooks ask about a job (its user,
account, QPU allocation, end time), what the device monitor reserves, what the job-side
Slurm-mode primitives submit, query and cancel, and what ``qproxy usage`` reads from sacct.
The job's own environment is user-controlled and proves nothing; Slurm's answer is what counts.

The bottom layer: stdlib only, nothing of ``qproxy.slurm`` (the root hooks) or the proxy, so
job-side code (``qproxy.client``, ``qiskit_slurm_provider``) imports it without them. One
module per topic; import a name from the module that owns it (nothing is re-exported here):

- ``run``: running a Slurm command, ``SlurmError``
- ``states``: Slurm job states by outcome
- ``parse``: the value shapes of each Slurm version (22.05, v0.0.40+ JSON, text)
- ``record``: ``JobRecord`` -- one job from any version's JSON or ``scontrol -o`` text
- ``admincomment``: the prolog's AdminComment (``QpuComment``), setting and booking it (root)
- ``jobs``: job queries (``squeue --json``, ``scontrol -o show job``, live and pending jobs)
- ``cluster``: host lists, node addresses, licence totals
- ``reservations``: the device monitor's licence reservations (root)
- ``submit``: the job-side ``Slurm`` (sbatch, scancel, a job's state with every fallback)
- ``sacct``: accounting records for ``qproxy usage``
"""
