"""The Runtime API's error shape, so the client shows our refusals like IBM's own."""

from __future__ import annotations

import uuid

import orjson
from aiohttp import web

MORE_INFO = "https://github.com/qproxy/qproxy/blob/main/docs/proxy.md"


def error_response(status: int, message: str, code: int | None = None) -> web.Response:
    body = {
        "errors": [{"code": code if code is not None else status, "message": message,
                    "more_info": MORE_INFO}],
        "trace": uuid.uuid4().hex,
    }
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json"
    )
