"""Every error answer carries a trace id; for the job's own (authenticated) requests the same id
is in the request's audit record and in the proxy's log, so the line behind a user's error
report can be found. Unauthenticated requests (anyone on the node can send them) are only
counted in summary records, never each written in full (docs/security.md)."""

from __future__ import annotations

import json
from typing import Any

import requests


def test_error_trace_is_audited_and_logged(proxy_factory: Any) -> None:
    p = proxy_factory("4242")
    # the proxy imports aiohttp after announcing itself (niced): on a loaded machine the first
    # answer can take a while; wait for it before the timed requests below
    requests.get(p.api + "/backends", timeout=120)
    # a refusal (policy), an unknown route, an unauthenticated call: three kinds of error
    answers = [
        requests.get(p.api + "/backends", timeout=10),
        requests.get(p.api + "/jobs/not-mine", headers=p.bearer(), timeout=10),
        requests.get(p.api + "/no/such/route", headers=p.bearer(), timeout=10),
    ]
    traces = []
    for r in answers:
        assert r.status_code >= 400, r.text
        body = r.json()
        assert body["errors"][0]["message"] and len(body["trace"]) == 32, body
        traces.append(body["trace"])
    assert len(set(traces)) == 3  # a fresh id per error
    p.stop()
    records = [json.loads(line) for line in p.audit_log.read_text().splitlines()]
    audited = {rec.get("trace"): rec for rec in records if rec.get("trace")}
    log = p.output()
    for trace, r in list(zip(traces, answers, strict=True))[1:]:  # the authenticated ones
        assert audited[trace]["status"] == r.status_code, audited
        assert f"(trace {trace})" in log, log[-2000:]
    assert traces[0] not in audited  # the unauthenticated one: counted, not recorded
    assert [rec for rec in records if rec.get("event") == "unauthenticated"], records[-3:]
