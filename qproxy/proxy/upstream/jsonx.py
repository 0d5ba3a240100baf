"""Wire JSON: orjson for speed, the stdlib as a lossless fallback.

Job params are the client's opaque JSON. orjson rejects what Python's json module writes for
NaN/Infinity and integers beyond 64 bits (and would silently turn NaN into null when
dumping), so anything orjson cannot round-trip goes through the stdlib instead of being
refused or altered.
"""

from __future__ import annotations

import json
from typing import Any

import orjson


class Doc:
    """A parsed JSON document that remembers which parser could read it."""

    __slots__ = ("value", "stdlib")

    def __init__(self, value: Any, stdlib: bool = False) -> None:
        self.value = value
        self.stdlib = stdlib


def loads(raw: bytes | bytearray) -> Doc:
    """Parse; raise ValueError if it is not JSON at all."""
    try:
        return Doc(orjson.loads(raw))
    except orjson.JSONDecodeError:
        return Doc(json.loads(raw), stdlib=True)


def dumps(value: Any, stdlib: bool = False) -> bytes:
    if not stdlib:
        try:
            return orjson.dumps(value)
        except TypeError:  # e.g. an integer beyond 64 bits
            pass
    return json.dumps(value, separators=(",", ":")).encode()
