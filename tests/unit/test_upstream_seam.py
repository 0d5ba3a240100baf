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
    client = connect(up, {"emu": "key"})
    assert isinstance(client, IBMRuntimeUpstream) and "key" not in repr(client)


def test_unknown_kind_is_a_config_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load(_conf(tmp_path, 'kind = "ionq"'))
    assert ('[upstreams.emu].kind must be a known upstream kind (ibm-quantum-system, '
            'ibm-runtime), got "ionq"') in str(err.value)


def test_kind_table_matches_the_config_names() -> None:
    """The config owns the kind names (it imports nothing above it); the seam's table must
    give every one of them a class, and no more."""
    from qproxy.config import UPSTREAM_KINDS

    assert set(KINDS) == set(UPSTREAM_KINDS)
    for target in KINDS.values():
        module, _, cls = target.partition(":")
        assert hasattr(__import__(module, fromlist=[cls]), cls)


QS = """
[upstreams.onprem]
kind = "ibm-quantum-system"
url = "https://direct-access.example.org:30060"
iam_url = "https://iam.cloud.ibm.com"
instance = "crn:v1:x"
api_key_secret = "qs"
{extra}
[resources.ibm_onprem]
upstream = "onprem"
backend = "ibm_marrakesh"
"""


def test_each_kind_has_its_own_checked_table(tmp_path: Path) -> None:
    """A table is checked against its kind's fields: every problem at once, the S3 settings
    required for the Quantum System kind and unknown to the Runtime one."""
    from qproxy.config import QuantumSystemSettings

    path = tmp_path / "qproxy.toml"
    path.write_text(QS.format(extra='s3_bucket = "Bad_Bucket"\napi_version = "2025-01-01"'))
    with pytest.raises(ConfigError) as err:
        load(path)
    text = str(err.value)
    assert "[upstreams.onprem].s3_endpoint is required" in text
    assert "[upstreams.onprem].s3_access_key_secret is required" in text
    assert '[upstreams.onprem].s3_bucket must be an S3 bucket name' in text
    assert "[upstreams.onprem].api_version is not a known setting" in text
    path.write_text(QS.format(extra='s3_endpoint = "http://10.0.0.5:9000"\n'
                              's3_bucket = "qpu-jobs"\ns3_access_key_secret = "a"\n'
                              's3_secret_key_secret = "b"'))
    with pytest.raises(ConfigError) as err:
        load(path)  # plain http only to loopback: the presigned URLs are credentials
    assert "[upstreams.onprem].s3_endpoint must be an https:// URL" in str(err.value)
    path.write_text(QS.format(extra='s3_endpoint = "https://s3.example.org"\n'
                              's3_bucket = "qpu-jobs"\ns3_access_key_secret = "a"\n'
                              's3_secret_key_secret = "b"'))
    up = load(path).upstreams["onprem"]
    assert isinstance(up, QuantumSystemSettings)
    assert up.secret_names() == ("qs", "a", "b") and up.s3_region == "us-east-1"
    client = connect(up, {"qs": "k1", "a": "k2", "b": "k3"})
    assert client.kind == "ibm-quantum-system"
    assert not {"k1", "k2", "k3"} & set(repr(client).split("'"))
    s3 = BASE.format(kind='s3_bucket = "x"')
    path.write_text(s3)
    with pytest.raises(ConfigError) as err:
        load(path)
    assert "[upstreams.emu].s3_bucket is not a known setting" in str(err.value)
