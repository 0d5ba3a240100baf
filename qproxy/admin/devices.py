"""Each configured resource's device as its upstream reports it (the seam's
``device_status``, with the centre's credentials): is the upstream reachable, is the device
online, is it reserved. Root only (reads the vendor key); used by ``qproxy status``."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from qproxy.config import Config, Resource


@dataclass(frozen=True)
class DeviceStatus:
    resource: str
    backend: str  # the upstream's device name
    upstream: str  # [upstreams.NAME]
    reachable: bool
    online: bool  # reachable and the device accepts jobs
    status: str = ""  # the upstream's word ("active", "paused", ...), or why it is unknown
    message: str = ""
    queue: int | None = None  # the upstream's queue length for the device
    locked: bool = False  # reserved: jobs outside the reservation cannot run


async def _one(config: Config, resource: Resource, timeout: float) -> DeviceStatus:
    from qproxy.secrets import SecretsError
    from qproxy.upstream import open_upstream
    from qproxy.upstream.base import UpstreamError

    upstream = config.upstream_for(resource)
    base = DeviceStatus(resource.name, resource.backend, upstream.name, False, False)
    try:
        client = open_upstream(config, resource)
    except SecretsError as exc:
        return _with(base, status="no credentials", message=str(exc))
    try:
        st = await asyncio.wait_for(client.device_status(resource.backend), timeout)
    except TimeoutError:
        return _with(base, status="unreachable", message=f"no answer within {timeout:g} s")
    except (UpstreamError, OSError) as exc:
        return _with(base, status="unreachable", message=str(exc)[:200])
    finally:
        await client.close()
    return _with(base, reachable=True, online=st.online and not st.locked,
                 status=st.status + (" (reserved)" if st.locked else ""),
                 message=st.message, queue=st.queue_length, locked=st.locked)


def _with(base: DeviceStatus, **changes: object) -> DeviceStatus:
    from dataclasses import replace

    return replace(base, **changes)  # type: ignore[arg-type]


async def _all(config: Config, timeout: float) -> list[DeviceStatus]:
    return list(await asyncio.gather(*(_one(config, r, timeout)
                                       for r in config.resources.values())))


def probe(config: Config, timeout: float = 5.0) -> list[DeviceStatus]:
    """Every resource's device, asked in parallel, each bounded by ``timeout`` seconds."""
    return asyncio.run(_all(config, timeout))
