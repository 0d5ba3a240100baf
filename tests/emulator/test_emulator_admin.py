"""The emulator's admin endpoint: only its own key (not a bearer token, which every proxy
holds) takes a device offline; the status endpoints then say so, and back again."""

from __future__ import annotations

import pytest
import requests

from tests.support.emulator import EmulatorProcess, api_headers

pytestmark = [pytest.mark.timeout(200)]
PATH = "/admin/backends/fake_torino/status"


def status(emu: EmulatorProcess) -> dict[str, object]:
    r = requests.get(emu.url + "/api/v1/backends/fake_torino/status",
                     headers=api_headers(emu), timeout=10)
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_only_the_key_changes_a_device(emulator: EmulatorProcess) -> None:
    url = emulator.url + PATH
    body = {"status": "offline", "message": "cryostat warm-up"}
    for headers in ({}, api_headers(emulator), {"Authorization": "apikey wrong"}):
        r = requests.put(url, json=body, headers=headers, timeout=10)
        assert r.status_code == 401, r.text
        assert "apikey" in r.json()["errors"][0]["message"]
    assert status(emulator)["state"] is True
    key = {"Authorization": f"apikey {emulator.api_key}"}
    r = requests.put(url, json={"status": "sideways"}, headers=key, timeout=10)
    assert r.status_code == 400 and "must be one of" in r.text
    try:
        r = requests.put(url, json=body, headers=key, timeout=10)
        assert r.status_code == 200, r.text
        assert r.json() == {"backend": "fake_torino", "status": "offline",
                            "message": "cryostat warm-up"}
        doc = status(emulator)
        assert doc["state"] is False and doc["status"] == "offline"
        assert doc["message"] == "cryostat warm-up"
        devices = requests.get(emulator.url + "/api/v1/backends", headers=api_headers(emulator),
                               timeout=10).json()["devices"]
        torino = next(d for d in devices if d["name"] == "fake_torino")
        assert torino["status"] == {"name": "offline", "reason": "cryostat warm-up"}
    finally:
        r = requests.put(url, json={"status": "online"}, headers=key, timeout=10)
    assert r.status_code == 200
    doc = status(emulator)
    assert (doc["state"], doc["status"], doc["message"]) == (True, "active", "available")
