"""A job submission's envelope: its top-level fields parsed, its ``params`` kept as the bytes
the client sent.

Why: the policies read and rewrite only top-level fields (backend, session, tags, cost); the
params are the client's opaque PUBs, up to ``max_request_bytes``. Parsing 20 MB of them and
encoding them again took ~70 + ~35 ms here (the submission at 1.86x direct); finding where
they end takes C-speed searches (``bytes.find``, one regex) and a Python step per string or
bracket, and the upstream then receives them byte for byte.

Safety: the scanner follows JSON's grammar for what decides a value's extent -- strings with
their escapes, brackets that must match -- so the extent it finds is the one every JSON
parser finds, and the upstream sees exactly the top-level fields the policies saw. A
top-level key given twice is refused (parsers disagree about which one wins). Everything
but the kept values is parsed and checked here; the inside of ``params`` is the upstream's
to refuse if it is not valid JSON, as it would be without the proxy.
"""

from __future__ import annotations

import re
from typing import Any

from qproxy.upstream import jsonx

KEPT = frozenset({"params"})
_WS = frozenset(b" \t\n\r")
_STRUCT = re.compile(rb'["\[\]{}]')
_SCALAR = re.compile(rb"[^\s,\]}]+")
_OPEN, _CLOSE = {0x7B: 0x7D, 0x5B: 0x5D}, frozenset(b"]}")


class Envelope:
    """``fields``: the parsed top-level fields, with each kept one as a ``jsonx.Raw``;
    ``stdlib``: whether a field needed the stdlib parser (see jsonx)."""

    __slots__ = ("fields", "stdlib")

    def __init__(self, fields: dict[str, Any], stdlib: bool) -> None:
        self.fields = fields
        self.stdlib = stdlib


def _ws(b: bytearray | bytes, i: int) -> int:
    n = len(b)
    while i < n and b[i] in _WS:
        i += 1
    return i


def _string_end(b: bytearray | bytes, i: int) -> int:
    """Just past the string that opens at ``i``: the first quote not escaped by an odd
    number of backslashes."""
    j = i + 1
    while True:
        k = b.find(b'"', j)
        if k < 0:
            raise ValueError("unterminated string")
        m = k - 1
        while b[m] == 0x5C:  # stops at the opening quote at the latest
            m -= 1
        if (k - 1 - m) % 2 == 0:
            return k + 1
        j = k + 1


def _value_end(b: bytearray | bytes, i: int) -> int:
    if i >= len(b):
        raise ValueError("value expected")
    c = b[i]
    if c == 0x22:
        return _string_end(b, i)
    if c in _OPEN:
        stack = [_OPEN[c]]
        j = i + 1
        while stack:
            m = _STRUCT.search(b, j)
            if m is None:
                raise ValueError("unterminated array or object")
            k = m.start()
            ch = b[k]
            if ch == 0x22:
                j = _string_end(b, k)
                continue
            if ch in _CLOSE:
                if stack.pop() != ch:
                    raise ValueError("mismatched brackets")
            else:
                stack.append(_OPEN[ch])
            j = k + 1
        return j
    m = _SCALAR.match(b, i)
    if m is None:
        raise ValueError("value expected")
    return m.end()


def split(body: bytearray, kept: frozenset[str] = KEPT) -> Envelope:
    """The envelope of a JSON object body; ValueError if the body is not one."""
    view = memoryview(body)
    i = _ws(body, 0)
    if i >= len(body) or body[i] != 0x7B:
        raise ValueError("not a JSON object")
    fields: dict[str, Any] = {}
    stdlib = False
    i = _ws(body, i + 1)
    if i < len(body) and body[i] == 0x7D:
        i += 1
    else:
        while True:
            if i >= len(body) or body[i] != 0x22:
                raise ValueError("object key expected")
            end = _string_end(body, i)
            key = jsonx.loads(view[i:end]).value
            if key in fields:
                raise ValueError(f"key {str(key)[:64]!r} given twice")
            i = _ws(body, end)
            if i >= len(body) or body[i] != 0x3A:
                raise ValueError("':' expected")
            i = _ws(body, i + 1)
            end = _value_end(body, i)
            if key in kept:
                fields[key] = jsonx.Raw(view[i:end])
            else:
                doc = jsonx.loads(view[i:end])
                fields[key] = doc.value
                stdlib = stdlib or doc.stdlib
            i = _ws(body, end)
            if i < len(body) and body[i] == 0x2C:
                i = _ws(body, i + 1)
                continue
            if i < len(body) and body[i] == 0x7D:
                i += 1
                break
            raise ValueError("',' or '}' expected")
    if _ws(body, i) != len(body):
        raise ValueError("data after the JSON object")
    return Envelope(fields, stdlib)
