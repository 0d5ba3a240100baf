"""The upstream seam: every vendor is one module here implementing the ``Upstream`` protocol
of ``base.py`` (operations in the Runtime API's terms), named in ``KINDS`` (one line each);
admins pick one with ``[upstreams.NAME] kind = "..."``, whose table the config checks against
that kind's settings class. ``connect`` builds the configured one from its credentials;
``open_upstream`` builds a resource's client with its credentials from the secrets file (the
device monitor, ``qproxy status``, the epilog's leftover cleanup: everyone but the proxy,
which reads them before it announces itself).

The kind names are the config's (``qproxy.config.UPSTREAM_KINDS``: the validator checks a
kind without importing this package); ``KINDS`` maps each to its class, and
tests/unit/test_upstream_seam.py checks that the two name the same kinds.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from qproxy.config import Config, Resource, UpstreamSettings
    from qproxy.upstream.base import Upstream

# kind -> "module:class"
KINDS: dict[str, str] = {
    "ibm-runtime": "qproxy.upstream.ibm_runtime:IBMRuntimeUpstream",
    "ibm-quantum-system": "qproxy.upstream.quantum_system:QuantumSystemUpstream",
}


def connect(settings: UpstreamSettings, credentials: Mapping[str, str]) -> Upstream:
    """The client for one configured upstream (no I/O yet: sessions open on first use).
    ``credentials``: secret name -> value, for each of ``settings.secret_names()``."""
    module, _, cls = KINDS[settings.kind].partition(":")
    factory = getattr(importlib.import_module(module), cls)
    client: Upstream = factory(settings, credentials)
    return client


def read_credentials(config: Config, settings: UpstreamSettings) -> dict[str, str]:
    """The upstream's secrets from the secrets file (SecretsError if one is unreadable)."""
    from qproxy.secrets import get_secret

    return {name: get_secret(config, name) for name in settings.secret_names()}


def open_upstream(config: Config, resource: Resource) -> Upstream:
    """The client of ``resource``'s upstream with its credentials (SecretsError if
    unreadable)."""
    upstream = config.upstream_for(resource)
    return connect(upstream, read_credentials(config, upstream))
