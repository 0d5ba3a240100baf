"""One emulator serving both APIs (``--api both``) and one real S3 server (SeaweedFS) for the
contract suite, and an upstream client of each kind on them: ``upstream`` is parametrized
by kind, so every contract test runs once per kind (tests/contract/test_contract.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest

from qproxy.config import QuantumSystemSettings, RuntimeUpstreamSettings, UpstreamSettings
from qproxy.emulator import s3local
from qproxy.upstream import connect
from qproxy.upstream.base import Upstream
from tests.support.emulator import EmulatorProcess, launch_emulator

BACKEND = "test_dev"
LANES = 2
KINDS = ("ibm-runtime", "ibm-quantum-system")


@dataclass
class Servers:
    emu: EmulatorProcess
    s3: s3local.LocalS3

    def settings(self, kind: str) -> UpstreamSettings:
        common = {"name": "contract", "iam_url": self.emu.url, "instance": self.emu.instance,
                  "api_key_secret": "key"}
        if kind == "ibm-runtime":
            return RuntimeUpstreamSettings(url=self.emu.url + "/api/v1", **common)
        return QuantumSystemSettings(
            kind=kind, url=self.emu.url, s3_endpoint=self.s3.endpoint,
            s3_bucket=self.s3.bucket, s3_region=self.s3.region, s3_access_key_secret="s3id",
            s3_secret_key_secret="s3key", retry_max_seconds=0.5, **common)

    def credentials(self, **override: str) -> dict[str, str]:
        return {"key": self.emu.api_key, "s3id": self.s3.access_key_id,
                "s3key": self.s3.secret_access_key, **override}

    def secrets(self) -> list[str]:
        """What must never reach a job."""
        return [self.emu.api_key, self.s3.access_key_id, self.s3.secret_access_key,
                self.s3.endpoint, "X-Amz-Signature", "X-Amz-Credential"]


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    """Started side by side; every job stays Running >= 0.5 s, so a cancel is no race."""
    with ThreadPoolExecutor(2) as pool:
        s3_future = pool.submit(s3local.start, tmp_path_factory.mktemp("s3"))
        try:
            emu = launch_emulator(tmp_path_factory.mktemp("emulator"),
                                  backends=f"{BACKEND}=fake_manila_v2,fake_guadalupe_v2",
                                  lanes=str(LANES),
                                  extra_args=["--api", "both", "--min-job-seconds", "0.5"])
        finally:
            s3 = s3_future.result()
        try:
            yield Servers(emu, s3)
        finally:
            list(pool.map(lambda stop: stop(), (emu.stop, lambda: s3.stop(timeout=0.2))))


@dataclass
class Observed:
    calls: list[tuple[str, float | None]] = field(default_factory=list)

    def __call__(self, op: str, seconds: float | None) -> None:
        self.calls.append((op, seconds))


@pytest.fixture(params=KINDS)
async def upstream(request: pytest.FixtureRequest, servers: Servers
                   ) -> AsyncIterator[Upstream]:
    client = connect(servers.settings(request.param), servers.credentials())
    client.observe = Observed()
    try:
        yield client
    finally:
        await client.close()
