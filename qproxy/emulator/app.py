"""The emulator's aiohttp application: IAM plus the Runtime API under both mount points,
and/or IBM's Quantum System API at ``/v1`` (qsa.py).

The Runtime API is mounted at ``/api/v1`` (the real service's path, which the proxy calls
upstream) and at ``/experimental/api/v1`` (where an unmodified client sends requests when
configured via :func:`qproxy.clientenv.client_env`, see that module for why). ``apis`` says
which APIs are served (``runtime``, ``quantum-system``, or both); both share one scheduler,
so the device models, lanes and warm workers are the same.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Awaitable, Callable

from aiohttp import web

from ..runtime_api import API_PREFIXES, IAM_TOKEN_PATH
from . import admin, qsa
from .auth import Authenticator, auth_middleware
from .backends import Device
from .errors import ApiError, error_response
from .jobs import Scheduler
from .routes import INSTANCE, ROUTES, SCHEDULER

log = logging.getLogger("qproxy.emulator")
DEFAULT_INSTANCE = "crn:v1:bluemix:public:quantum-computing:us-east:a/emulator:emulator::"
RUNTIME_API = "runtime"
QUANTUM_SYSTEM_API = "quantum-system"
APIS = (RUNTIME_API, QUANTUM_SYSTEM_API)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure leaves as the API's error shape; never a traceback or an HTML page."""
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.message, exc.code)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = exc.reason if exc.status != 404 else f"Not found: {request.path}"
        return error_response(exc.status, message)
    except Exception:  # noqa: BLE001 - last resort: log it, answer 500 in the API's shape
        log.error(
            "unhandled error on %s %s:\n%s", request.method, request.path, traceback.format_exc()
        )
        return error_response(500, "Internal server error.", 1500)


async def health(request: web.Request) -> web.Response:
    """Liveness plus warm-up progress: ``lanes_warm`` of ``lanes`` lane workers have built
    their device's noise model (see :mod:`.jobs`). No authentication."""
    scheduler = request.app[SCHEDULER]
    return web.json_response(
        {"status": "ok", "lanes": scheduler.lanes_total, "lanes_warm": scheduler.lanes_warm}
    )


def create_app(
    devices: dict[str, Device],
    api_keys: list[str],
    seed: int | None = None,
    instance: str = DEFAULT_INSTANCE,
    min_job_seconds: float = 0.3,
    qpu_time: bool = False,
    token_ttl: int = 3600,
    apis: tuple[str, ...] = (RUNTIME_API,),
) -> web.Application:
    """Build the app; lane workers start with it and stop at cleanup."""
    unknown = set(apis) - set(APIS)
    if unknown or not apis:
        raise ValueError(f"unknown API(s) {sorted(unknown)}; choose from {', '.join(APIS)}")
    auth = Authenticator(api_keys, token_ttl=token_ttl)
    app = web.Application(
        middlewares=[error_middleware, auth_middleware(auth, API_PREFIXES)],
        client_max_size=256 * 1024 * 1024,
    )
    scheduler = Scheduler(
        devices, seed=seed, min_job_seconds=min_job_seconds, qpu_time=qpu_time
    )
    app[SCHEDULER] = scheduler
    app[INSTANCE] = instance
    app.router.add_post(IAM_TOKEN_PATH, auth.token_handler)
    app.router.add_get("/health", health)
    admin.add_routes(app, auth)
    if RUNTIME_API in apis:
        for prefix in API_PREFIXES:
            for method, path, handler in ROUTES:
                app.router.add_route(method, prefix + path, handler)
    if QUANTUM_SYSTEM_API in apis:
        app.add_subapp(qsa.PREFIX, qsa.create_subapp(scheduler, auth, RUNTIME_API in apis))

    async def lifecycle(app: web.Application):  # type: ignore[no-untyped-def]
        await scheduler.start()
        yield
        await scheduler.stop()

    app.cleanup_ctx.append(lifecycle)
    return app
