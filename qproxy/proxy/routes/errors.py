"""The Runtime API's error shape, so the client shows our refusals like IBM's own.

Every error carries a fresh ``trace`` id. The response remembers it (``resp["trace"]``) so the
audit middleware writes it into the request's record and the proxy log names it: a user who
quotes the trace of an error lets the admin find the line behind it.
"""

from __future__ import annotations

import orjson
from aiohttp import web

from qproxy.runtime_api import error_body, new_trace_id

MORE_INFO = "https://github.com/qproxy/qproxy/blob/main/docs/proxy.md"
TRACE = "trace"  # key on the response object (aiohttp responses are mutable mappings)


def error_response(status: int, message: str, code: int | None = None) -> web.Response:
    trace = new_trace_id()
    body = error_body(status, message, code, more_info=MORE_INFO, trace=trace)
    resp = web.Response(status=status, body=orjson.dumps(body), content_type="application/json")
    resp[TRACE] = trace
    return resp
