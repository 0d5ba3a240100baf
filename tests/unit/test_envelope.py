"""The submission envelope (qproxy.proxy.envelope): top-level fields parsed, params kept as
sent; what is forwarded parses to what was received, and bodies whose extent a parser could
read differently are refused."""

from __future__ import annotations

import json
import random

import pytest

from qproxy.proxy import envelope
from qproxy.upstream import jsonx


def _forwarded(body: bytes) -> bytes:
    return jsonx.dumps(envelope.split(bytearray(body)).fields)


TRICKY = [
    b'{}', b' { } ', b'{"a":1}',
    b'{"program_id":"sampler","params":{"pubs":[["OPENQASM 3; // ]}\\"[{",null,100]]},'
    b'"backend":"ibm_fez"}',
    b'{"params":"\\\\","backend":"x"}',  # a string ending in an escaped backslash
    b'{"params":"\\\\\\"}","backend":"x"}',  # \\ then \" inside the string
    b'{"params" : [ {"a" : [ ] } , "}" , 1e5 , true , null ] , "tags" : ["t"] }',
    '{"params":{"\u00e9\u4e2d":"\U0001f600"},"b\\u0022":2}'.encode(),
    b'{"params":-1.5e-3,"cost":7}',
    b'\n{"params":{},"x":[]}\n',
]


@pytest.mark.parametrize("body", TRICKY)
def test_forwarded_parses_as_received(body: bytes) -> None:
    assert json.loads(_forwarded(body)) == json.loads(body)


def test_params_are_forwarded_byte_for_byte() -> None:
    params = b'{"seed": 1180591620717411303424, "x": NaN,  "pubs" : [ ]}'
    body = b'{"program_id":"sampler","params":' + params + b',"backend":"ibm_fez"}'
    env = envelope.split(bytearray(body))
    assert isinstance(env.fields["params"], jsonx.Raw) and not env.stdlib
    env.fields["backend"] = "fake_fez"
    out = jsonx.dumps(env.fields)
    assert params in out
    assert out == (b'{"program_id":"sampler","backend":"fake_fez","params":' + params + b"}")


def test_top_level_only_the_stdlib_reads_is_kept() -> None:
    env = envelope.split(bytearray(b'{"note":NaN,"params":{}}'))
    assert env.stdlib
    assert jsonx.dumps(env.fields, env.stdlib) == b'{"note":NaN,"params":{}}'


def test_random_documents_round_trip() -> None:
    rng = random.Random(15)
    alphabet = 'ab"\\/[]{},: \n\u00e9\u4e2d\U0001f600\x7f'

    def value(depth: int) -> object:
        kind = rng.randrange(7 if depth < 4 else 4)
        if kind == 0:
            return "".join(rng.choice(alphabet) for _ in range(rng.randrange(8)))
        if kind == 1:
            return rng.choice([0, -1, 2.5e-7, 10**20, True, False, None])
        if kind == 2:
            return rng.random()
        if kind == 3:
            return ""
        if kind in (4, 5):
            return [value(depth + 1) for _ in range(rng.randrange(4))]
        return {str(value(3)): value(depth + 1) for _ in range(rng.randrange(4))}

    for _ in range(300):
        doc = {"program_id": value(2), "params": value(0), "tags": value(1)}
        for indent in (None, 1):
            body = json.dumps(doc, indent=indent, ensure_ascii=rng.random() < 0.5).encode()
            assert json.loads(_forwarded(body)) == doc


@pytest.mark.parametrize("body", [
    b'', b'[]', b'"x"', b'{', b'{"a"}', b'{"a":}', b'{"a":1,}', b'{"a":1 "b":2}',
    b'{"a":1}x', b'{"a":1}{}', b'{a:1}', b'{"params":[}', b'{"params":{]}',
    b'{"params":"no end}', b'{"params":[1,2}', b'{"a":tru}',
    b'{"backend":"a","params":{},"backend":"b"}',  # which one wins differs between parsers
])
def test_not_an_unambiguous_object_is_refused(body: bytes) -> None:
    with pytest.raises(ValueError):
        envelope.split(bytearray(body))
