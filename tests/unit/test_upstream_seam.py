"""The upstream seam: ``[upstreams.NAME] kind`` picks the vendor module through one table;
an unknown kind is a config problem reported like any other, before a proxy ever starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from qproxy.config import ConfigError, load
from qproxy.upstream import KINDS, connect
from qproxy.upstream.ibm_runtime import IBMRuntimeUpstream

BASE = """
[upstreams.emu]
url = "http://127.0.0.1:8290/api/v1"
iam_url = "http://127.0.0.1:8290"
instance = "crn:v1:x"
api_key_secret = "emu"
{kind}
[resources.ibm_fez]
upstream = "emu"
backend = "fake_fez"
"""


def _conf(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / "qproxy.toml"
    path.write_text(BASE.format(kind=kind))
    return path


def test_default_kind_is_ibm_runtime(tmp_path: Path) -> None:
    up = load(_conf(tmp_path, "")).upstreams["emu"]
    assert up.kind == "ibm-runtime" and "ibm-runtime" in KINDS
    client = connect(up, "key")
    assert isinstance(client, IBMRuntimeUpstream) and "key" not in repr(client)


def test_unknown_kind_is_a_config_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load(_conf(tmp_path, 'kind = "ionq"'))
    assert '[upstreams.emu].kind must be a known upstream kind (ibm-runtime), got "ionq"' in str(
        err.value)


def test_kind_table_matches_the_config_names() -> None:
    """The config owns the kind names (it imports nothing above it); the seam's table must
    give every one of them a class, and no more."""
    from qproxy.config import UPSTREAM_KINDS

    assert set(KINDS) == set(UPSTREAM_KINDS)
    for target in KINDS.values():
        module, _, cls = target.partition(":")
        assert hasattr(__import__(module, fromlist=[cls]), cls)
