"""Helpers for the attacks of test_hostile.py: code run as an unprivileged local user.

Each attacker runs in a child interpreter that drops to ``nobody`` (uid 65534) before it
opens a socket, so the proxy sees what it would see from another user on the node. Every
loop is bounded by count and by time (2 cores, shared machine).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

NOBODY = 65534

_DROP = "import os; os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"

# Listens on a loopback port as nobody; writes its port, then everything it receives
# (as latin-1) to stdout as one JSON line when it exits (after `seconds`).
LISTENER = _DROP + r'''
import json, socket, sys, time
srv = socket.create_server(("127.0.0.1", 0)); srv.settimeout(0.2)
print(srv.getsockname()[1], flush=True)
got, deadline = b"", time.monotonic() + float(sys.argv[1])
while time.monotonic() < deadline:
    try:
        c, _ = srv.accept()
    except OSError:
        continue
    c.settimeout(0.5)
    try:
        while len(got) < 1 << 20:
            b = c.recv(65536)
            if not b:
                break
            got += b
    except OSError:
        pass
    c.close()
print(json.dumps(got.decode("latin-1")), flush=True)
'''

# Opens N connections to 127.0.0.1:PORT as nobody and dribbles header bytes on each (one
# line every 0.3 s, never the blank line that ends the headers) for at most `seconds`;
# reports per connection whether the proxy refused it (503) and when it was closed.
SLOWLORIS = _DROP + r'''
import json, socket, sys, time
port, n, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
t0 = time.monotonic()
conns = []
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port), timeout=2)
    s.setblocking(False)
    try:
        s.send(b"GET /api/v1/backends HTTP/1.1\r\nHost: x\r\n")
    except OSError:
        pass
    conns.append({"s": s, "closed": None, "refused": False, "data": b""})
while time.monotonic() - t0 < seconds and any(c["closed"] is None for c in conns):
    for c in conns:
        if c["closed"] is not None:
            continue
        try:
            b = c["s"].recv(4096)
            if not b:
                c["closed"] = time.monotonic() - t0
            c["data"] += b
        except BlockingIOError:
            pass
        except OSError:
            c["closed"] = time.monotonic() - t0
        if c["data"].startswith(b"HTTP/1.1 503"):
            c["refused"] = True
        try:
            if c["closed"] is None:
                c["s"].send(b"X-Slow: 1\r\n")
        except BlockingIOError:
            pass
        except OSError:
            c["closed"] = time.monotonic() - t0
    time.sleep(0.3)
print(json.dumps([{"closed": c["closed"], "refused": c["refused"]} for c in conns]))
'''


ATTACKER = Path(__file__).resolve().parents[1] / "support" / "attacker.py"


def attacker(*args: str, cwd: Path | None = None) -> subprocess.Popen[str]:
    """tests/support/attacker.py (what test_hostile_jobs runs in a neighbour's job) as nobody;
    the modules it needs are imported before the drop (the interpreter may live in a
    directory only root can enter)."""
    code = ("import errno, http.client, json, os, runpy, secrets, socket, sys, time, pathlib\n"
            + _DROP
            + f"sys.argv = [{str(ATTACKER)!r}, *sys.argv[1:]]\n"
            + "runpy.run_path(sys.argv[0], run_name='__main__')\n")
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE,
                            text=True, cwd=cwd)


def attacker_result(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return dict(json.loads(out.strip().splitlines()[-1]))


def start_listener(seconds: float) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen([sys.executable, "-c", LISTENER, str(seconds)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


def listener_received(proc: subprocess.Popen[str], timeout: float) -> str:
    out, _ = proc.communicate(timeout=timeout)
    return str(json.loads(out.strip().splitlines()[-1]))


def slowloris(port: int, n: int, seconds: float) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", SLOWLORIS, str(port), str(n), str(seconds)],
                            stdout=subprocess.PIPE, text=True)


def slowloris_result(proc: subprocess.Popen[str], timeout: float) -> list[dict[str, Any]]:
    out, _ = proc.communicate(timeout=timeout)
    return list(json.loads(out))
