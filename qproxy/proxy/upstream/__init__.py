"""The upstream seam: every vendor is one module here implementing the ``Upstream`` protocol
of ``base.py``, named in ``KINDS`` (one line each); admins pick one with
``[upstreams.NAME] kind = "..."``. ``connect`` builds the configured one.

``KINDS`` is a plain table of import paths so that the config validator can check a kind
without importing aiohttp or any vendor's module.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from qproxy.config import UpstreamSettings
    from qproxy.proxy.upstream.base import Upstream

# kind -> "module:class"
KINDS: dict[str, str] = {
    "ibm-runtime": "qproxy.proxy.upstream.ibm_runtime:IBMRuntimeUpstream",
}
DEFAULT_KIND = "ibm-runtime"


def connect(settings: UpstreamSettings, api_key: str) -> Upstream:
    """The client for one configured upstream (no I/O yet: sessions open on first use)."""
    module, _, cls = KINDS[settings.kind].partition(":")
    factory = getattr(importlib.import_module(module), cls)
    client: Upstream = factory(settings, api_key)
    return client
