"""What runs inside the user's job: ``qrun`` (primitive payload files), the payload format,
and the Slurm-mode primitives (each primitive call its own Slurm job)."""
