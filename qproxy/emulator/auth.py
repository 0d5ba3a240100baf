"""IAM emulation and request authentication.

The client exchanges its API key at ``POST /identity/token`` and then sends
``Authorization: Bearer <access token>``; it decodes the token as a JWT to learn when to
refresh it, so the access tokens are real HS256 JWTs with an ``exp`` claim, signed with a
random per-process secret (a restart invalidates all tokens, like a key rotation would).
``Authorization: apikey KEY`` is accepted too: the client falls back to it when the IAM answer
is not a decodable JWT.
"""

from __future__ import annotations

import hmac
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import jwt
from aiohttp import web

from .errors import ApiError, error_response

ACCESS_TOKEN_TTL = 3600
GRANT_APIKEY = "urn:ibm:params:oauth:grant-type:apikey"
GRANT_REFRESH = "refresh_token"
JWT_ALGORITHM = "HS256"


class Authenticator:
    """Holds the accepted API keys and the JWT signing secret."""

    def __init__(self, api_keys: Iterable[str], token_ttl: int = ACCESS_TOKEN_TTL) -> None:
        self.api_keys = [k for k in api_keys if k]
        if not self.api_keys:
            raise ValueError("at least one API key is required")
        self.token_ttl = token_ttl
        self._secret = secrets.token_bytes(32)
        self._refresh_tokens: dict[str, str] = {}

    def key_ok(self, key: str) -> bool:
        """Constant-time comparison against every accepted key."""
        ok = False
        for accepted in self.api_keys:
            ok |= hmac.compare_digest(key.encode(), accepted.encode())
        return ok

    def issue(self, subject: str) -> dict[str, object]:
        """An IAM-shaped token answer."""
        now = int(time.time())
        exp = now + self.token_ttl
        claims = {
            "iss": "qproxy-emulator",
            "sub": subject,
            "iat": now,
            "exp": exp,
            "jti": uuid.uuid4().hex,
        }
        access = jwt.encode(claims, self._secret, algorithm=JWT_ALGORITHM)
        refresh = secrets.token_urlsafe(32)
        self._refresh_tokens[refresh] = subject
        return {
            "access_token": access,
            "refresh_token": refresh,
            "ims_user_id": 0,
            "token_type": "Bearer",
            "expires_in": self.token_ttl,
            "expiration": exp,
            "scope": "ibm openid",
        }

    def verify_bearer(self, token: str) -> str:
        """Return the subject of a valid access token, else raise a 401 ApiError."""
        try:
            claims = jwt.decode(token, self._secret, algorithms=[JWT_ALGORITHM])
        except jwt.ExpiredSignatureError:
            raise ApiError(401, "The access token has expired.", 401) from None
        except jwt.PyJWTError:
            raise ApiError(401, "Invalid access token.", 401) from None
        return str(claims.get("sub", ""))

    def authenticate(self, header: str | None) -> str:
        """Check an Authorization header (Bearer JWT or ``apikey KEY``)."""
        if not header:
            raise ApiError(401, "Missing Authorization header.", 401)
        scheme, _, value = header.strip().partition(" ")
        value = value.strip()
        if scheme.lower() == "bearer" and value:
            return self.verify_bearer(value)
        if scheme.lower() == "apikey" and value:
            if self.key_ok(value):
                return "apikey"
            raise ApiError(401, "Invalid API key.", 401)
        raise ApiError(401, "Unsupported Authorization scheme.", 401)

    async def token_handler(self, request: web.Request) -> web.Response:
        """``POST /identity/token``: IBM IAM's API-key (and refresh) grant."""
        form = await request.post()
        grant = str(form.get("grant_type", ""))
        if grant == GRANT_APIKEY:
            key = str(form.get("apikey", ""))
            if not key or not self.key_ok(key):
                return _iam_error(400, "BXNIM0415E", "Provided API key could not be found.")
            return web.json_response(self.issue("apikey-user"))
        if grant == GRANT_REFRESH:
            subject = self._refresh_tokens.pop(str(form.get("refresh_token", "")), None)
            if subject is None:
                return _iam_error(400, "BXNIM0407E", "Provided refresh token is invalid.")
            return web.json_response(self.issue(subject))
        return _iam_error(400, "BXNIM0109E", f"Unsupported grant_type {grant!r}.")


def _iam_error(status: int, code: str, message: str) -> web.Response:
    """IAM's own error shape (it is not the Runtime API's)."""
    return web.json_response(
        {"errorCode": code, "errorMessage": message, "context": {"requestId": uuid.uuid4().hex}},
        status=status,
    )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def auth_middleware(auth: Authenticator, protected_prefixes: tuple[str, ...]) -> Any:
    """Reject Runtime API requests without a valid token (401, API error shape)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith(protected_prefixes):
            try:
                request["subject"] = auth.authenticate(request.headers.get("Authorization"))
            except ApiError as exc:
                return error_response(exc.status, exc.message, exc.code)
        return await handler(request)

    return middleware
