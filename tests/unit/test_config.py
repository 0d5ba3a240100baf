"""The admin config loader: types and values checked, every problem reported in one error."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from qproxy.config import ConfigError, ProxySettings, Resource, RuntimeUpstreamSettings, load

SHIPPED = Path(__file__).resolve().parents[2] / "conf" / "qproxy.toml"

UPSTREAM = """
[upstreams.emu]
url = "http://127.0.0.1:8290/api/v1"
iam_url = "http://127.0.0.1:8290"
instance = "crn:v1:test::"
api_key_secret = "emu"
"""
RESOURCE = """
[resources.ibm_fez]
upstream = "emu"
backend = "fake_fez"
"""


def _write(tmp_path: Path, text: str) -> Path:
    conf = tmp_path / "qproxy.toml"
    conf.write_text(text)
    return conf


def _problems(tmp_path: Path, text: str) -> list[str]:
    """The problem lines of the ConfigError load() raises, after checking its summary line."""
    conf = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load(conf)
    head, *lines = str(info.value).split("\n")
    n = len(lines)
    assert head == f"config {conf} has {n} problem{'s' if n != 1 else ''}:"
    assert all(line.startswith("  ") for line in lines)
    return [line[2:] for line in lines]


def test_shipped_config_loads() -> None:
    config = load(SHIPPED)
    assert set(config.resources) == {"ibm_fez", "ibm_torino"}
    fez = config.resource("ibm_fez")
    assert (fez.lanes, fez.backend, fez.upstream) == (2, "fake_fez", "emulator")
    assert config.upstream_for(fez).url == "http://127.0.0.1:8290/api/v1"
    assert config.proxy.lanes_wait_seconds == 600.0
    assert isinstance(config.proxy.lanes_wait_seconds, float)  # TOML wrote 600


def test_defaults_applied(tmp_path: Path) -> None:
    config = load(_write(tmp_path, UPSTREAM + RESOURCE))
    assert config.proxy == ProxySettings()
    assert config.upstreams["emu"].api_version == "2025-05-01"
    assert config.upstreams["emu"].verify_tls is True
    fez = config.resources["ibm_fez"]
    assert (fez.lanes, fez.allowed_users, fez.allowed_accounts) == (1, (), ())
    assert config.state_dir == Path("/run/qproxy")
    assert config.audit_dir == Path("/var/log/qproxy")
    assert config.secrets_file == Path("/etc/qproxy/secrets.toml")
    assert config.secrets_key_file == Path("/etc/qproxy/secrets.key")


def test_empty_file_loads(tmp_path: Path) -> None:
    config = load(_write(tmp_path, ""))
    assert (config.upstreams, config.resources) == ({}, {})


def test_values_converted(tmp_path: Path) -> None:
    text = UPSTREAM + RESOURCE + 'allowed_users = ["alice"]\nlanes = 3\n'
    text += "[proxy]\nspare_idle_seconds = 5\n"
    config = load(_write(tmp_path, text))
    assert config.resources["ibm_fez"] == Resource(
        name="ibm_fez", upstream="emu", backend="fake_fez", lanes=3, allowed_users=("alice",)
    )
    assert config.proxy.spare_idle_seconds == 5.0
    assert isinstance(config.proxy.spare_idle_seconds, float)
    assert config.upstreams["emu"] == RuntimeUpstreamSettings(
        name="emu", url="http://127.0.0.1:8290/api/v1", iam_url="http://127.0.0.1:8290",
        instance="crn:v1:test::", api_key_secret="emu",
    )


def test_relative_paths_resolve_against_config_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = tmp_path / "etc"
    d.mkdir()
    monkeypatch.chdir(tmp_path)  # not the config's directory
    config = load(_write(d, '[paths]\nstate_dir = "state"\naudit_dir = "/abs/audit"\n'))
    assert config.state_dir == d / "state"
    assert config.audit_dir == Path("/abs/audit")
    assert config.secrets_file == Path("/etc/qproxy/secrets.toml")


def test_unknown_backend(tmp_path: Path) -> None:
    config = load(_write(tmp_path, UPSTREAM + RESOURCE))
    with pytest.raises(ConfigError, match=r"^unknown QPU backend 'ibm_kyiv' \(known: ibm_fez\)$"):
        config.resource("ibm_kyiv")
    with pytest.raises(ConfigError, match=r"known: none configured"):
        load(_write(tmp_path, "")).resource("ibm_fez")


# The known-settings list is the dataclass's own field order (one owner: config.py).
PROXY_KNOWN = ", ".join(f.name for f in dataclasses.fields(ProxySettings))


@pytest.mark.parametrize(("text", "problem"), [
    # types
    (RESOURCE + 'lanes = "2"', '[resources.ibm_fez].lanes must be an integer, got "2"'),
    (RESOURCE + "lanes = true", "[resources.ibm_fez].lanes must be an integer, got true"),
    (RESOURCE + "lanes = 2.0", "[resources.ibm_fez].lanes must be an integer, got 2.0"),
    (RESOURCE + 'allowed_users = "alice"',
     '[resources.ibm_fez].allowed_users must be a list of strings, got "alice"'),
    (RESOURCE + 'allowed_accounts = ["a", 1]',
     '[resources.ibm_fez].allowed_accounts must be a list of strings, got ["a", 1]'),
    (RESOURCE.replace('"fake_fez"', "5"), "[resources.ibm_fez].backend must be a string, got 5"),
    ("[proxy]\nstatus_poll_seconds = true",
     "[proxy].status_poll_seconds must be a number, got true"),
    ('[proxy]\nlanes_wait_seconds = "10"',
     '[proxy].lanes_wait_seconds must be a number, got "10"'),
    ("[proxy]\nhost = 127", "[proxy].host must be a string, got 127"),
    ('[upstreams.emu]\nurl = "https://h"\niam_url = "https://h"\ninstance = "i"\n'
     'api_key_secret = "k"\nverify_tls = "no"',
     '[upstreams.emu].verify_tls must be true or false, got "no"'),
    ("[paths]\nstate_dir = 3", "[paths].state_dir must be a string (a path), got 3"),
    ('[paths]\naudit_dir = ["a"]', '[paths].audit_dir must be a string (a path), got ["a"]'),
    # tables, keys
    ('resources = "ibm_fez"', "[resources] must be a table"),
    ("[upstreams]\nemu = 1", "[upstreams.emu] must be a table"),
    ("proxy = [1]", "[proxy] must be a table"),
    ("[resource.ibm_fez]",
     "[resource] is not a known table (known: paths, proxy, accounting, upstreams, resources)"),
    ('[proxy]\nlanes_mod = "wait"',
     f"[proxy].lanes_mod is not a known setting (known: {PROXY_KNOWN})"),
    ('[paths]\nstate = "x"', "[paths].state is not a known setting "
     "(known: state_dir, audit_dir, secrets_file, secrets_key_file, cluster_key_file, "
     "audit_key_file)"),
    ('[resources.ibm_fez]\nupstream = "emu"',
     "[resources.ibm_fez].backend is required"),
    ('[resources.ibm_fez]\nbackend = "fake_fez"',
     "[resources.ibm_fez].upstream is required"),
    ('[resources.ibm_fez]\nname = "x"\nupstream = "emu"\nbackend = "f"',
     "[resources.ibm_fez].name is not a known setting (known: upstream, backend, lanes, "
     "dedicated_sessions, allowed_users, allowed_accounts)"),
    # values
    ('[proxy]\nlanes_mode = "queue"',
     '[proxy].lanes_mode must be "wait" or "refuse", got "queue"'),
    ("[proxy]\nspares = -1", "[proxy].spares must be >= 0, got -1"),
    ("[proxy]\nspare_idle_seconds = 0", "[proxy].spare_idle_seconds must be > 0, got 0"),
    ("[proxy]\nmax_request_bytes = 0", "[proxy].max_request_bytes must be > 0, got 0"),
    ("[proxy]\nmax_response_bytes = -1", "[proxy].max_response_bytes must be >= 0, got -1"),
    ("[proxy]\ntoken_ttl_seconds = 0", "[proxy].token_ttl_seconds must be > 0, got 0"),
    ("[proxy]\nlanes_wait_seconds = -0.5",
     "[proxy].lanes_wait_seconds must be >= 0, got -0.5"),
    ("[proxy]\nlanes_wait_seconds = nan", "[proxy].lanes_wait_seconds must be >= 0, got nan"),
    ("[proxy]\nstart_timeout_seconds = 0",
     "[proxy].start_timeout_seconds must be > 0, got 0"),
    ("[proxy]\nstatus_poll_seconds = -1", "[proxy].status_poll_seconds must be > 0, got -1"),
    ('[proxy]\nhost = ""', '[proxy].host must be non-empty, got ""'),
    (RESOURCE + "lanes = 0", "[resources.ibm_fez].lanes must be >= 1, got 0"),
    ('[resources.ibm_fez]\nupstream = "emu"\nbackend = ""',
     '[resources.ibm_fez].backend must be non-empty, got ""'),
])
def test_each_malformed_field_has_its_line(tmp_path: Path, text: str, problem: str) -> None:
    if "upstreams" not in text:
        text += "\n" + UPSTREAM  # after: a top-level key before any table header
    assert _problems(tmp_path, text) == [problem]


def _upstream(**override: str) -> str:
    keys = {"url": '"http://127.0.0.1:8290/api/v1"', "iam_url": '"https://iam.example.org"',
            "instance": '"crn:v1:test::"', "api_key_secret": '"emu"', **override}
    return "[upstreams.emu]\n" + "".join(f"{k} = {v}\n" for k, v in keys.items() if v)


@pytest.mark.parametrize(("override", "problem"), [
    ({"url": '"ftp://h/api"'},
     '[upstreams.emu].url must be '
      'an https:// URL, or http:// to a loopback address (127.0.0.1, ::1, localhost), got "ftp://h/api"'),
    ({"url": '"127.0.0.1:8290/api/v1"'},
     '[upstreams.emu].url must be '
      'an https:// URL, or http:// to a loopback address (127.0.0.1, ::1, localhost),'
     ' got "127.0.0.1:8290/api/v1"'),
    ({"iam_url": '"https://"'},
     '[upstreams.emu].iam_url must be '
      'an https:// URL, or http:// to a loopback address (127.0.0.1, ::1, localhost), got "https://"'),
    ({"iam_url": '"http://[::1"'},  # urlsplit raises on this one
     '[upstreams.emu].iam_url must be '
      'an https:// URL, or http:// to a loopback address (127.0.0.1, ::1, localhost),'
     ' got "http://[::1"'),
    ({"instance": '""'}, '[upstreams.emu].instance must be non-empty, got ""'),
    ({"api_key_secret": '""'}, '[upstreams.emu].api_key_secret must be non-empty, got ""'),
    ({"url": ""}, "[upstreams.emu].url is required"),
    ({"instance": ""}, "[upstreams.emu].instance is required"),
])
def test_upstream_fields(tmp_path: Path, override: dict[str, str], problem: str) -> None:
    assert _problems(tmp_path, _upstream(**override)) == [problem]


def test_upstream_urls_accepted(tmp_path: Path) -> None:
    text = _upstream(url='"https://quantum.cloud.ibm.com/api/v1"', iam_url='"http://[::1]:80"')
    assert load(_write(tmp_path, text)).upstreams["emu"].iam_url == "http://[::1]:80"


def test_resource_upstream_must_be_defined(tmp_path: Path) -> None:
    text = UPSTREAM + RESOURCE.replace('"emu"', '"ibm"')
    assert _problems(tmp_path, text) == [
        '[resources.ibm_fez].upstream "ibm" is not defined in [upstreams] (defined: emu)'
    ]
    assert _problems(tmp_path, RESOURCE) == [
        '[resources.ibm_fez].upstream "emu" is not defined in [upstreams] (defined: none)'
    ]
    # an upstream that is itself invalid is reported as such, not as undefined
    assert _problems(tmp_path, _upstream(url='"x"') + RESOURCE) == [
        '[upstreams.emu].url must be '
         'an https:// URL, or http:// to a loopback address (127.0.0.1, ::1, localhost), got "x"'
    ]


def test_every_problem_reported_at_once(tmp_path: Path) -> None:
    text = """
[paths]
state_dir = 3
[proxy]
lanes_mode = "queue"
spares = -1
[upstreams.emu]
url = "ftp://x"
iam_url = "https://h"
instance = ""
[resources.ibm_fez]
upstream = "ibm"
backend = "fake_fez"
lanes = "2"
[resources.ibm_torino]
upstream = "emu"
"""
    conf = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load(conf)
    assert str(info.value) == "\n".join([
        f"config {conf} has 9 problems:",
        "  [paths].state_dir must be a string (a path), got 3",
        '  [proxy].lanes_mode must be "wait" or "refuse", got "queue"',
        "  [proxy].spares must be >= 0, got -1",
        '  [upstreams.emu].url must be '
         'an https:// URL, or http:// to a loopback address (127.0.0.1, ::1, localhost), got "ftp://x"',
        '  [upstreams.emu].instance must be non-empty, got ""',
        "  [upstreams.emu].api_key_secret is required",
        '  [resources.ibm_fez].lanes must be an integer, got "2"',
        '  [resources.ibm_fez].upstream "ibm" is not defined in [upstreams] (defined: emu)',
        "  [resources.ibm_torino].backend is required",
    ])


def test_one_problem_keeps_the_summary_line(tmp_path: Path) -> None:
    conf = _write(tmp_path, UPSTREAM + RESOURCE + 'lanes = "2"')
    with pytest.raises(ConfigError) as info:
        load(conf)
    assert str(info.value) == (
        f"config {conf} has 1 problem:\n"
        '  [resources.ibm_fez].lanes must be an integer, got "2"'
    )


def test_reading_errors_are_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load(missing)
    assert str(info.value) == f"cannot read config {missing}: No such file or directory"
    bad = _write(tmp_path, "[proxy\n")
    with pytest.raises(ConfigError) as info:
        load(bad)
    assert str(info.value).startswith(f"config {bad} is not valid TOML: ")
    assert "\n" not in str(info.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a 0000 file")
def test_unreadable_file(tmp_path: Path) -> None:
    conf = _write(tmp_path, "")
    conf.chmod(0)
    with pytest.raises(ConfigError, match=r"^cannot read config .*: Permission denied$"):
        load(conf)


def test_hostile_neighbour_rules(tmp_path: Path) -> None:
    """Plain http only to loopback (the key goes over it); the audit key outside audit_dir;
    the in-flight budget holds at least one largest body."""
    assert _problems(tmp_path, _upstream(url='"http://10.0.0.5:8290/api/v1"') + RESOURCE) == [
        '[upstreams.emu].url must be an https:// URL, or http:// to a loopback address '
        '(127.0.0.1, ::1, localhost), got "http://10.0.0.5:8290/api/v1"'
    ]
    assert load(_write(tmp_path, _upstream(url='"http://[::1]:8290/api/v1"') + RESOURCE))
    inside = '[paths]\naudit_dir = "a"\naudit_key_file = "a/k"\n' + _upstream() + RESOURCE
    assert _problems(tmp_path, inside) == [
        "[paths].audit_key_file must not be inside audit_dir (whoever can write the logs "
        "must not read the key that signs them)"]
    small = "[proxy]\ninflight_bytes = 10\n" + _upstream() + RESOURCE
    assert _problems(tmp_path, small) == [
        "[proxy].inflight_bytes (10) must be at least max_request_bytes (67108864)"]
