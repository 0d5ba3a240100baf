"""The Runtime API's error shape, so clients and the proxy see what IBM's service sends.

Every non-2xx answer from the emulator is ``{"errors": [{"code", "message", "more_info"}],
"trace": ...}``: the client's ``RequestsApiError`` parses exactly that, and the proxy passes it
through, so a traceback or aiohttp's HTML error page must never reach the wire.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .. import runtime_api

MORE_INFO = "https://quantum.cloud.ibm.com/docs/errors"


class ApiError(Exception):
    """An error answered to the client in the API's shape (raised anywhere in a handler)."""

    def __init__(self, status: int, message: str, code: int | str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code if code is not None else status


def error_body(status: int, message: str, code: int | str | None = None) -> dict[str, Any]:
    """The JSON body IBM's Runtime API uses for errors."""
    return runtime_api.error_body(status, message, code, more_info=MORE_INFO)


def error_response(status: int, message: str, code: int | str | None = None) -> web.Response:
    """An aiohttp response carrying :func:`error_body`."""
    return web.json_response(error_body(status, message, code), status=status)
