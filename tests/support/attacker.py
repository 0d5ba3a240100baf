"""Run INSIDE a test job as the neighbour (the cluster's second unprivileged user): attacks on
another user's QPU job on the same node. Stdlib only; every loop is bounded by count and
time; each command prints one JSON line with what it saw.

  flood PORT N [SECONDS [token [RATE]]]
                          N unauthenticated requests with 8 KB control-byte paths, keep-alive,
                          for at most SECONDS (60), at most RATE a second (0: no pause); with
                          `token` every other one is a token exchange with a wrong API key
  exchange PORT TOKEN N GAP
                          N token exchanges with TOKEN, GAP seconds apart (a job's own token
                          traded from this uid: judged by the token, not by this uid's junk)
  authflood PORT TOKEN N SECONDS KIND
                          this job's own authenticated requests (its token traded for a JWT),
                          keep-alive: KIND `404` GETs of jobs with ever new ~8 KB ids, `ok`
                          GETs of the job list; stops 3 requests after the first 503
  hold PORT N SECONDS     open N connections, report accepted/refused, hold them SECONDS
                          (touches ./holding once they are open)
  bind PORT               try to listen on 127.0.0.1:PORT (a dead proxy's port)
  lookalike JOB SECONDS   a process whose command line reads `qproxy serve --job-id JOB`
  scan OUT                copy everything this user can read where secrets could be (the
                          cluster state dir, /tmp, /dev/shm, /run, every /proc/*/cmdline and
                          environ) into OUT, bounded
"""

from __future__ import annotations

import errno
import http.client
import json
import os
import secrets
import socket
import sys
import time
from pathlib import Path

LIMIT = 64 << 20  # scan: bytes copied at most


def publish(name: str, text: str) -> None:
    """Write ./NAME whole or not at all (temp file + rename): the test polls for it to
    exist and then reads it, and once read it empty (seen in CI)."""
    Path(name + ".tmp").write_text(text)
    os.replace(name + ".tmp", name)


def _exchange_request(apikey: str) -> bytes:
    form = f"grant_type=urn%3Aibm%3Aparams%3Aoauth%3Agrant-type%3Aapikey&apikey={apikey}"
    return (f"POST /identity/token HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: application/x-www-form-urlencoded\r\n"
            f"Content-Length: {len(form)}\r\n\r\n{form}").encode()


def flood(port: int, n: int, seconds: float = 60.0, mode: str = "",
          rate: float = 0.0) -> dict[str, object]:
    path = "/" + "%01" * 2700  # ~8 KB: each %01 would be \u0001 (6 bytes) in a naive log
    junk = [f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()]
    if mode == "token":
        junk.append(_exchange_request("x" * 43))
    statuses: dict[str, int] = {}
    t0 = time.monotonic()
    sent, deadline = 0, t0 + seconds
    sock: socket.socket | None = None
    buf = b""
    while sent < n and time.monotonic() < deadline:
        if sock is None:
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            buf = b""
        if rate > 0:
            time.sleep(max(0.0, t0 + sent / rate - time.monotonic()))
        try:
            sock.sendall(junk[sent % len(junk)])
            while b"\r\n\r\n" not in buf:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionResetError
                buf += chunk
            head, _, rest = buf.partition(b"\r\n\r\n")
            length = next((int(h.split(b":")[1]) for h in head.split(b"\r\n")
                           if h.lower().startswith(b"content-length:")), 0)
            while len(rest) < length:
                rest += sock.recv(65536)
            buf = rest[length:]
            code = head.split(b" ")[1].decode()
            statuses[code] = statuses.get(code, 0) + 1
            sent += 1
            if b"connection: close" in head.lower():
                sock.close()
                sock = None
        except OSError:
            statuses["reset"] = statuses.get("reset", 0) + 1
            sock.close()
            sock = None
    if sock is not None:
        sock.close()
    return {"sent": sent, "statuses": statuses, "seconds": round(time.monotonic() - t0, 3)}


def exchange(port: int, token: str, n: int, gap: float) -> dict[str, object]:
    statuses: dict[str, int] = {}
    deadline = time.monotonic() + 60
    for _ in range(n):
        if time.monotonic() > deadline:
            break
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(_exchange_request(token))
                code = s.recv(65536).split(b" ")[1].decode()
        except (OSError, IndexError):
            code = "error"
        statuses[code] = statuses.get(code, 0) + 1
        time.sleep(gap)
    return {"statuses": statuses}


def authflood(port: int, token: str, n: int, seconds: float, kind: str) -> dict[str, object]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    form = f"grant_type=urn%3Aibm%3Aparams%3Aoauth%3Agrant-type%3Aapikey&apikey={token}"
    conn.request("POST", "/identity/token", form,
                 {"Content-Type": "application/x-www-form-urlencoded"})
    r = conn.getresponse()
    body = json.loads(r.read())
    t0 = time.monotonic()
    if r.status != 200:  # the exchange is authenticated work too: 503 when it cannot be audited
        return {"sent": 0, "statuses": {f"exchange {r.status}": 1}, "seconds": 0.0,
                "refused_message": body["errors"][0]["message"]}
    headers = {"Authorization": f"Bearer {body['access_token']}"}
    statuses: dict[str, int] = {}
    refused, message = 0, ""
    sent = 0
    while sent < n and time.monotonic() - t0 < seconds and refused < 4:
        path = ("/api/v1/jobs/" + secrets.token_hex(4000) if kind == "404"
                else "/api/v1/jobs?limit=1")
        conn.request("GET", path, headers=headers)
        r = conn.getresponse()
        body = r.read()
        statuses[str(r.status)] = statuses.get(str(r.status), 0) + 1
        sent += 1
        if r.status == 503:
            refused += 1
            message = message or json.loads(body)["errors"][0]["message"]
    conn.close()
    return {"sent": sent, "statuses": statuses, "refused_message": message,
            "seconds": round(time.monotonic() - t0, 3)}


def hold(port: int, n: int, seconds: float) -> dict[str, object]:
    socks, refused, failed = [], 0, 0
    for _ in range(n):
        try:
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        except OSError:
            failed += 1
    time.sleep(0.5)
    alive = []
    for s in socks:  # a refused connection got a 503 and was closed
        s.setblocking(False)
        try:
            data = s.recv(4096)
        except BlockingIOError:
            alive.append(s)
            continue
        except OSError:
            data = b""
        refused += 1 if data.startswith(b"HTTP/1.1 503") or not data else 0
        s.close()
    publish("holding", str(len(alive)))
    time.sleep(seconds)
    for s in alive:
        s.close()
    return {"opened": len(socks), "held": len(alive), "refused": refused, "failed": failed}


def bind(port: int) -> dict[str, object]:
    try:
        s = socket.create_server(("127.0.0.1", port))
    except OSError as exc:
        return {"bound": False, "errno": errno.errorcode.get(exc.errno or 0, str(exc.errno))}
    s.close()
    return {"bound": True}


def lookalike(job: str, seconds: float) -> None:
    publish("lookalike.pid", str(os.getpid()))
    code = f"import time; time.sleep({float(seconds)})"
    os.execv(sys.executable, [sys.executable, "-c", code, "-m", "qproxy", "serve",
                              "--job-id", job, "--backend", "ibm_fez"])


def scan(out: Path, roots: list[str]) -> dict[str, object]:
    copied, files = 0, 0
    with out.open("wb") as dump:
        def take(p: str) -> None:
            nonlocal copied, files
            if copied >= LIMIT:
                return
            try:
                with open(p, "rb") as fh:
                    data = fh.read(LIMIT - copied)
            except OSError:
                return
            dump.write(p.encode() + b"\0" + data + b"\n")
            copied += len(data)
            files += 1

        for pid in os.listdir("/proc"):
            if pid.isdigit():
                take(f"/proc/{pid}/cmdline")
                take(f"/proc/{pid}/environ")
        for root in roots:
            for d, dirs, names in os.walk(root):
                dirs[:] = [x for x in dirs if not os.path.islink(os.path.join(d, x))]
                for name in names:
                    p = os.path.join(d, name)
                    if os.path.isfile(p) and not os.path.islink(p):
                        take(p)
    return {"files": files, "bytes": copied}


def main(argv: list[str]) -> int:
    cmd, args = argv[0], argv[1:]
    if cmd == "flood":
        result = flood(int(args[0]), int(args[1]), float(args[2]) if args[2:] else 60.0,
                       args[3] if args[3:] else "", float(args[4]) if args[4:] else 0.0)
    elif cmd == "exchange":
        result = exchange(int(args[0]), args[1], int(args[2]), float(args[3]))
    elif cmd == "authflood":
        result = authflood(int(args[0]), args[1], int(args[2]), float(args[3]), args[4])
    elif cmd == "hold":
        result = hold(int(args[0]), int(args[1]), float(args[2]))
    elif cmd == "bind":
        result = bind(int(args[0]))
    elif cmd == "lookalike":
        lookalike(args[0], float(args[1]))
        return 1  # not reached
    elif cmd == "scan":
        result = scan(Path(args[0]), args[1:])
    else:
        print(f"unknown command {cmd}", file=sys.stderr)
        return 2
    print(json.dumps({cmd: result}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
