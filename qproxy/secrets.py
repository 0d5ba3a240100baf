"""Admin-held vendor credentials: a TOML file ``[secrets] name = "value" | "fernet:..."``.

Values may be encrypted with a Fernet key kept in a separate file, so a leaked secrets file
(backup, config management) is useless alone. Both files must be private to their owner:
a group- or world-readable secrets or key file is refused outright rather than used, since
by then the secret must be assumed leaked.
"""

from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING

from qproxy.config import Config
from qproxy.files import atomic_write

if TYPE_CHECKING:  # imported lazily: only encrypted secrets need cryptography (~30 ms)
    from cryptography.fernet import Fernet

PREFIX = "fernet:"


class SecretsError(RuntimeError):
    """A secret is missing, unreadable, undecryptable, or stored insecurely."""


def check_private(path: Path, what: str) -> None:
    """Refuse files readable (or writable) by group/other."""
    try:
        st = path.stat()
    except OSError as exc:
        raise SecretsError(f"cannot read {what} {path}: {exc.strerror}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecretsError(
            f"refusing to use {what} {path}: it is accessible by group/other "
            f"(mode {stat.S_IMODE(st.st_mode):04o}); run: chmod 600 {path}"
        )


def read_table(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    check_private(path, "secrets file")
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SecretsError(f"cannot parse secrets file {path}: {exc}") from None
    table = data.get("secrets", {})
    if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
        raise SecretsError(f"{path}: [secrets] must map names to strings")
    return dict(table)


def load_key(path: Path) -> Fernet:
    from cryptography.fernet import Fernet

    check_private(path, "secrets key file")
    try:
        return Fernet(path.read_bytes().strip())
    except (OSError, ValueError) as exc:
        raise SecretsError(f"invalid secrets key file {path}: {exc}") from None


def decode(value: str, key_file: Path) -> str:
    if not value.startswith(PREFIX):
        return value
    from cryptography.fernet import InvalidToken

    try:
        return load_key(key_file).decrypt(value[len(PREFIX):].encode()).decode()
    except InvalidToken:
        raise SecretsError(f"cannot decrypt secret with key {key_file} (wrong key?)") from None


def get_secret(config: Config, name: str) -> str:
    table = read_table(config.secrets_file)
    if name not in table:
        raise SecretsError(f"secret {name!r} not found in {config.secrets_file}")
    return decode(table[name], config.secrets_key_file)


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_table(path: Path, table: dict[str, str]) -> None:
    """Atomic rewrite with mode 0600."""
    lines = ["# Managed by `qproxy secrets`. Mode 0600.", "[secrets]"]
    lines += [f"{_toml_str(k)} = {_toml_str(v)}" for k, v in sorted(table.items())]
    atomic_write(path, "\n".join(lines) + "\n")


def init_key(path: Path) -> None:
    if path.exists():
        raise SecretsError(f"{path} already exists; not overwriting a key (secrets need it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    from cryptography.fernet import Fernet

    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(Fernet.generate_key() + b"\n")


def set_secret(config: Config, name: str, value: str, encrypt: bool = True) -> None:
    table = read_table(config.secrets_file)
    if encrypt:
        token = load_key(config.secrets_key_file).encrypt(value.encode()).decode()
        table[name] = PREFIX + token
    else:
        table[name] = value
    write_table(config.secrets_file, table)
