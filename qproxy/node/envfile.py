"""A job's env file, ``{state_dir}/<job>/proxy.env``: ``KEY=VALUE`` lines (the client
variables of ``qproxy.clientenv``). A job's proxy or relay writes it (0600, atomically) once it
listens; the prolog and task-env wait for it and read it (``qproxy.slurm.proxyproc``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from qproxy.files import atomic_write


def write_env_file(path: Path, env: Mapping[str, str]) -> None:
    atomic_write(path, "".join(f"{k}={v}\n" for k, v in env.items()).encode())


def read_env_file(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and key:
            env[key.strip()] = value.strip()
    return env


def remove_env_file(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
