"""Job authentication: the per-job token and the short-lived JWTs minted from it.

The per-job token (>= 256 random bits) is what Slurm puts in the task's QISKIT_IBM_TOKEN; it
is NOT the vendor credential and is worth nothing outside this one proxy. The client trades
it at ``POST /identity/token`` for a JWT (HS256, signed with a per-process random key, so
restarting the proxy invalidates all of them) and sends ``Authorization: Bearer <jwt>``;
``Authorization: apikey <token>`` is accepted too (the client's fallback).

The JWTs are HS256 only, minted and checked by this one process, so they are done here with
hmac/hashlib/base64 (RFC 7519 subset: header, claims, HMAC-SHA256) rather than with pyjwt,
which imports ``cryptography`` (~30 ms and several MB per proxy) for algorithms never used.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from typing import Any

ISSUER = "qproxy"
_HEADER = b'{"alg":"HS256","typ":"JWT"}'
LEEWAY = 0


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def _unb64(data: bytes) -> bytes:
    return base64.urlsafe_b64decode(data + b"=" * (-len(data) % 4))


def encode_hs256(claims: dict[str, Any], key: bytes) -> str:
    signing = _b64(_HEADER) + b"." + _b64(json.dumps(claims, separators=(",", ":")).encode())
    sig = hmac.new(key, signing, hashlib.sha256).digest()
    return (signing + b"." + _b64(sig)).decode()


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


class InvalidJWT(ValueError):
    pass


def decode_hs256(token: str, key: bytes, now: float) -> dict[str, Any]:
    """Verify signature (HS256 only: the header must name it), then exp/iat/iss."""
    try:
        raw = token.encode("ascii")
        head, body, sig = raw.split(b".")
        expected = hmac.new(key, head + b"." + body, hashlib.sha256).digest()
        if not hmac.compare_digest(_unb64(sig), expected):
            raise InvalidJWT("bad signature")
        header = json.loads(_unb64(head))  # parsed only once it is known to be ours
        if not isinstance(header, dict) or header.get("alg") != "HS256":
            raise InvalidJWT("bad algorithm")
        claims = json.loads(_unb64(body))
    except (ValueError, binascii.Error, UnicodeError) as exc:
        raise InvalidJWT(str(exc)) from None
    if not isinstance(claims, dict):
        raise InvalidJWT("claims are not an object")
    exp, iat = claims.get("exp"), claims.get("iat")
    if not (_is_number(exp) and _is_number(iat)):
        raise InvalidJWT("missing exp/iat")
    assert isinstance(exp, int | float) and isinstance(iat, int | float)
    if claims.get("iss") != ISSUER:
        raise InvalidJWT("bad issuer")
    if iat > now + LEEWAY:
        raise InvalidJWT("issued in the future")
    if now >= exp + LEEWAY:
        raise ExpiredJWT("expired")
    return claims


class ExpiredJWT(InvalidJWT):
    pass


MAX_HEADER = 4096
VERIFIED_MAX = 16


def _wellformed(value: str) -> bool:
    return value.isascii() and value.isprintable()


def new_job_token() -> str:
    return secrets.token_urlsafe(32)


class JobAuth:
    def __init__(self, job_token: str, job_id: str, ttl: int, clock: Any = time.time) -> None:
        self._job_token = job_token
        self._key = secrets.token_bytes(32)
        self.job_id = job_id
        self.ttl = ttl
        self.clock = clock
        # JWTs this proxy minted and has verified once -> (iat, exp): a job sends the same one
        # on every request, and verifying it again (base64, HMAC, two JSON parses) was ~5% of
        # the proxy's CPU per request. Only verified tokens get in; a few at most.
        self._verified: dict[str, tuple[float, float]] = {}

    def check_token(self, presented: str) -> bool:
        # Credentials are ASCII: anything else (aiohttp hands undecodable header bytes over
        # as surrogates, which .encode() refuses) is simply wrong, never an exception.
        if not _wellformed(presented):
            return False
        return hmac.compare_digest(presented.encode("ascii"), self._job_token.encode())

    def mint(self) -> tuple[str, int]:
        now = int(self.clock())
        exp = now + self.ttl
        claims = {"iss": ISSUER, "sub": f"slurm_job:{self.job_id}", "iat": now, "exp": exp,
                  "jti": secrets.token_hex(8)}
        return encode_hs256(claims, self._key), exp

    def check_jwt(self, token: str) -> str | None:
        """None if valid, else the reason (for the 401 message)."""
        now = time.time()
        known = self._verified.get(token)
        if known is not None and known[0] <= now + LEEWAY and now < known[1] + LEEWAY:
            return None
        try:
            claims = decode_hs256(token, self._key, now)
            if len(self._verified) >= VERIFIED_MAX:
                self._verified.clear()
            self._verified[token] = (float(claims["iat"]), float(claims["exp"]))
        except ExpiredJWT:
            return "access token expired; request a new one at /identity/token"
        except InvalidJWT:
            return "invalid access token"
        return None

    def check_header(self, header: str | None) -> str | None:
        """None if the Authorization header authenticates this job, else the reason."""
        if not header:
            return "missing Authorization header"
        if not _wellformed(header) or len(header) > MAX_HEADER:
            return "malformed Authorization header"
        scheme, _, value = header.partition(" ")
        scheme, value = scheme.lower(), value.strip()
        if scheme == "bearer" and value:
            return self.check_jwt(value)
        if scheme == "apikey" and value:
            return None if self.check_token(value) else "invalid API key"
        return "unsupported Authorization scheme"
