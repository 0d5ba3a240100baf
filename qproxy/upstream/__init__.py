"""The upstream seam: every vendor is one module here implementing the ``Upstream`` protocol
of ``base.py``, named in ``KINDS`` (one line each); admins pick one with
``[upstreams.NAME] kind = "..."``. ``connect`` builds the configured one; ``open_upstream``
builds a resource's client with its key from the secrets file (the device monitor, ``qproxy
status``, the epilog's leftover cleanup: everyone but the proxy, which reads its key before it
announces itself).

The kind names are the config's (``qproxy.config.UPSTREAM_KINDS``: the validator checks a
kind without importing this package); ``KINDS`` maps each to its class, and
tests/unit/test_upstream_seam.py checks that the two name the same kinds.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from qproxy.config import Config, Resource, UpstreamSettings
    from qproxy.upstream.base import Upstream

# kind -> "module:class"
KINDS: dict[str, str] = {
    "ibm-runtime": "qproxy.upstream.ibm_runtime:IBMRuntimeUpstream",
}


def connect(settings: UpstreamSettings, api_key: str) -> Upstream:
    """The client for one configured upstream (no I/O yet: sessions open on first use)."""
    module, _, cls = KINDS[settings.kind].partition(":")
    factory = getattr(importlib.import_module(module), cls)
    client: Upstream = factory(settings, api_key)
    return client


def open_upstream(config: Config, resource: Resource) -> Upstream:
    """The client of ``resource``'s upstream with its API key (SecretsError if unreadable)."""
    from qproxy.secrets import get_secret

    upstream = config.upstream_for(resource)
    return connect(upstream, get_secret(config, upstream.api_key_secret))
