"""Running one Slurm command, and how that fails (:class:`SlurmError`)."""

from __future__ import annotations

import subprocess

TIMEOUT = 30.0


class SlurmError(RuntimeError):
    """A Slurm command could not be run, timed out, or answered nonsense."""


def run(cmd: list[str], timeout: float = TIMEOUT,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False,
                              env=env)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SlurmError(f"{cmd[0]} failed: {exc}") from None
