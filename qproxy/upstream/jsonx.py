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


class Raw:
    """A JSON value kept as the bytes it arrived in (qproxy.proxy.envelope): ``dumps`` writes
    it back unchanged where it is a top-level value of an object."""

    __slots__ = ("data",)

    def __init__(self, data: bytes | memoryview) -> None:
        self.data = data


def loads(raw: bytes | bytearray | memoryview) -> Doc:
    """Parse; raise ValueError if it is not JSON at all."""
    try:
        return Doc(orjson.loads(raw))
    except orjson.JSONDecodeError:
        return Doc(json.loads(bytes(raw) if isinstance(raw, memoryview) else raw), stdlib=True)


def dumps(value: Any, stdlib: bool = False) -> bytes:
    if isinstance(value, dict) and any(isinstance(v, Raw) for v in value.values()):
        return _with_raw(value, stdlib)
    if not stdlib:
        try:
            return orjson.dumps(value)
        except TypeError:  # e.g. an integer beyond 64 bits
            pass
    return json.dumps(value, separators=(",", ":")).encode()


def _with_raw(value: dict[Any, Any], stdlib: bool) -> bytes:
    """The object with its Raw values spliced in after the others: one copy of them, no
    encoding."""
    plain = dumps({k: v for k, v in value.items() if not isinstance(v, Raw)}, stdlib)
    parts: list[bytes | memoryview] = [plain[:-1]]
    sep = b"," if len(plain) > 2 else b""
    for k, v in value.items():
        if isinstance(v, Raw):
            parts += [sep, dumps(k), b":", v.data]
            sep = b","
    parts.append(b"}")
    return b"".join(parts)
