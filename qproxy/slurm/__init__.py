"""Slurm hook entry points, run as root by the SPANK plugin (spank_hooks/).

``qproxy hook prolog|task-env|epilog|reap``. The C plugin only dispatches; everything that
decides (validation, leases, the proxy's life cycle, error messages the user sees) is here.
Rule from DESIGN.md: the prolog and epilog never fail (a failing job_prolog/job_epilog drains
the node); the prolog records errors in the job's state dir and ``task-env`` fails the job's
tasks with that message instead (a failing task init fails the job, the node stays up).
"""
