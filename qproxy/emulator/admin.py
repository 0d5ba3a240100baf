"""The emulator's admin endpoint: take a device offline (or pause it) and back, so that the
device monitor (``qproxy monitor``) can be tested against a real status change.

``PUT /admin/backends/{name}/status`` with ``{"status": "online"|"paused"|"offline",
"message": "..."}`` and ``GET`` of the same path. Only ``Authorization: apikey KEY`` with one
of the emulator's own keys is accepted -- not a bearer token, which every proxy holds -- so it
is as root-only as the key file (and no proxy forwards ``/admin``: it is outside the Runtime
API prefixes the proxies serve). The change shows in ``GET /backends`` and
``GET /backends/{name}/status``; jobs are still accepted but stay Queued until the device is
online again (what IBM's service does with a paused device's jobs).

``qproxy emulator device NAME STATUS [--message M] --url URL --api-key-file F`` is the client.
It sends the emulator's key only where the proxy would send a vendor key: over verified https,
or over plain http to a listener root owns (``qproxy.upstream.guard``, checked on the
established connection before a byte is sent) -- not to whoever bound the port while the
emulator was down.

``PUT /admin/backends/{name}/reservation`` with ``{"locked": true|false}`` (and ``GET``), with
the same key, starts or ends a reservation: the Quantum System API (qsa.py) then shows the
backend ``locked`` and answers new jobs 423 (code 1233), as IBM's service does for jobs outside
an active reservation.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import urllib.parse
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .auth import Authenticator
from .errors import ApiError

if TYPE_CHECKING:
    from .backends import Device

STATES = ("online", "paused", "offline")
ADMIN_PATH = "/admin/backends/{name}/status"
RESERVATION_PATH = "/admin/backends/{name}/reservation"
AUTH = web.AppKey("admin_auth", Authenticator)


def _check_key(request: web.Request) -> None:
    scheme, _, value = (request.headers.get("Authorization") or "").partition(" ")
    if scheme.lower() != "apikey" or not value or not request.app[AUTH].key_ok(value.strip()):
        raise ApiError(401, "The admin endpoint needs 'Authorization: apikey KEY' with the "
                       "emulator's key.", 401)


def _doc(device: Device) -> dict[str, str]:
    return {"backend": device.name, "status": device.availability,
            "message": device.availability_message}


async def get_status(request: web.Request) -> web.Response:
    from .routes import SCHEDULER

    _check_key(request)
    return web.json_response(_doc(request.app[SCHEDULER].device(request.match_info["name"])))


async def _json_body(request: web.Request) -> Any:
    """The request's JSON body, or the API's 400."""
    try:
        return await request.json(loads=json.loads)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ApiError(400, "The request body is not valid JSON.", 1400) from None


async def put_status(request: web.Request) -> web.Response:
    from .routes import SCHEDULER

    _check_key(request)
    device = request.app[SCHEDULER].device(request.match_info["name"])
    body = await _json_body(request)
    status = body.get("status") if isinstance(body, dict) else None
    if status not in STATES:
        raise ApiError(400, f"'status' must be one of {', '.join(STATES)}.", 1400)
    message = body.get("message") or ("available" if status == "online" else status)
    if not isinstance(message, str) or len(message) > 200:
        raise ApiError(400, "'message' must be a string of at most 200 characters.", 1400)
    device.availability = status
    device.availability_message = message
    return web.json_response(_doc(device))


async def get_reservation(request: web.Request) -> web.Response:
    from .routes import SCHEDULER

    _check_key(request)
    device = request.app[SCHEDULER].device(request.match_info["name"])
    return web.json_response({"backend": device.name, "locked": device.locked})


async def put_reservation(request: web.Request) -> web.Response:
    from .routes import SCHEDULER

    _check_key(request)
    device = request.app[SCHEDULER].device(request.match_info["name"])
    body = await _json_body(request)
    locked = body.get("locked") if isinstance(body, dict) else None
    if not isinstance(locked, bool):
        raise ApiError(400, "'locked' must be true or false.", 1400)
    device.locked = locked
    return web.json_response({"backend": device.name, "locked": device.locked})


def add_routes(app: web.Application, auth: Authenticator) -> None:
    app[AUTH] = auth
    app.router.add_get(ADMIN_PATH, get_status)
    app.router.add_put(ADMIN_PATH, put_status)
    app.router.add_get(RESERVATION_PATH, get_reservation)
    app.router.add_put(RESERVATION_PATH, put_reservation)


def main(argv: list[str]) -> int:
    """``qproxy emulator device NAME STATUS``: set a device's status on a running emulator."""
    p = argparse.ArgumentParser(prog="qproxy emulator device", description=main.__doc__)
    p.add_argument("name", help="the backend name the emulator serves")
    p.add_argument("status", choices=STATES)
    p.add_argument("--message", default="")
    p.add_argument("--url", default="http://127.0.0.1:8290", help="the emulator's base URL")
    p.add_argument("--api-key-file", required=True, help="the emulator's key file (root)")
    args = p.parse_args(argv)
    try:
        with open(args.api_key_file) as fh:
            key = next(line.strip() for line in fh if line.strip() and line[0] != "#")
    except (OSError, StopIteration) as exc:
        print(f"qproxy emulator device: cannot read a key from {args.api_key_file}: {exc}",
              file=sys.stderr)
        return 2
    body = json.dumps({"status": args.status, "message": args.message}).encode()
    try:
        status, doc = _put(args.url, ADMIN_PATH.format(name=args.name), body, key)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        print(f"qproxy emulator device: {args.url}: {exc}", file=sys.stderr)
        return 1
    if status != 200:
        try:
            reason = doc["errors"][0]["message"]
        except (KeyError, IndexError, TypeError):
            reason = str(doc)[:200]
        print(f"qproxy emulator device: HTTP {status}: {reason}", file=sys.stderr)
        return 1
    print(f"{doc['backend']}: {doc['status']} ({doc['message']})")
    return 0


def _put(url: str, path: str, body: bytes, key: str) -> tuple[int, Any]:
    """PUT ``body`` with the key, once the listener is known to be one the key may go to."""
    from qproxy.upstream.guard import listener_problem

    u = urllib.parse.urlsplit(url)
    conn: http.client.HTTPConnection
    if u.scheme == "https":
        conn = http.client.HTTPSConnection(u.hostname or "", u.port, timeout=10)
    elif u.scheme == "http":
        conn = http.client.HTTPConnection(u.hostname or "", u.port, timeout=10)
    else:
        raise ValueError("the URL must be http:// or https://")
    try:
        conn.connect()
        if u.scheme == "http":
            problem = listener_problem(conn.sock, u.hostname, conn.port)
            if problem is not None:
                raise PermissionError(problem)
        conn.request("PUT", u.path.rstrip("/") + path, body=body, headers={
            "Authorization": f"apikey {key}", "Content-Type": "application/json"})
        resp = conn.getresponse()
        raw = resp.read(1 << 20)
        try:
            return resp.status, json.loads(raw)
        except ValueError:
            return resp.status, raw.decode("latin-1")[:200]
    finally:
        conn.close()
