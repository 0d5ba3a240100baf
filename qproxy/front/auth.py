"""Job authentication: the per-job token and the short-lived JWTs minted from it.

The per-job token (>= 256 random bits) is what Slurm puts in the task's QISKIT_IBM_TOKEN; it
is NOT the vendor credential and is worth nothing outside this one proxy. The client trades
it at ``POST /identity/token`` for a JWT (HS256, signed with a per-process random key, so
restarting the proxy invalidates all of them) and sends ``Authorization: Bearer <jwt>``;
``Authorization: apikey <token>`` is accepted too (the client's fallback).
"""

from __future__ import annotations

import hmac
import secrets
import time
from typing import Any

import jwt

ISSUER = "qproxy"


def new_job_token() -> str:
    return secrets.token_urlsafe(32)


class JobAuth:
    def __init__(self, job_token: str, job_id: str, ttl: int, clock: Any = time.time) -> None:
        self._job_token = job_token
        self._key = secrets.token_bytes(32)
        self.job_id = job_id
        self.ttl = ttl
        self.clock = clock

    def check_token(self, presented: str) -> bool:
        return hmac.compare_digest(presented.encode(), self._job_token.encode())

    def mint(self) -> tuple[str, int]:
        now = int(self.clock())
        exp = now + self.ttl
        claims = {"iss": ISSUER, "sub": f"slurm_job:{self.job_id}", "iat": now, "exp": exp,
                  "jti": secrets.token_hex(8)}
        return jwt.encode(claims, self._key, algorithm="HS256"), exp

    def check_jwt(self, token: str) -> str | None:
        """None if valid, else the reason (for the 401 message)."""
        try:
            jwt.decode(
                token, self._key, algorithms=["HS256"], issuer=ISSUER,
                options={"require": ["exp", "iat", "iss"]},
            )
        except jwt.ExpiredSignatureError:
            return "access token expired; request a new one at /identity/token"
        except jwt.PyJWTError:
            return "invalid access token"
        return None

    def check_header(self, header: str | None) -> str | None:
        """None if the Authorization header authenticates this job, else the reason."""
        if not header:
            return "missing Authorization header"
        scheme, _, value = header.partition(" ")
        scheme, value = scheme.lower(), value.strip()
        if scheme == "bearer" and value:
            return self.check_jwt(value)
        if scheme == "apikey" and value:
            return None if self.check_token(value) else "invalid API key"
        return "unsupported Authorization scheme"
