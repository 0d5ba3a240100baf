"""Issue 24 item 3 on the 3-node cluster: the job's user names a two-node QPU job so that its
`scontrol -o show job` line carries a forged ``AdminComment=qpu ... primary=ADDR:PORT run=0``
before the real one (JobName comes first). Before the fix the relay on the job's second node
took the first match and connected there from a reserved port with the relay header. Now the
relay reads AdminComment from ``squeue --json``, takes only a primary address signed with the
cluster key and on the first node's NodeAddr: it never connects to the forged address and the
job works."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from qproxy.slurmcli.admincomment import qpu_comment
from qproxy.slurmcli.record import record_from_text
from tests.multinode.support import MultiCluster, script_env

# Root on qnode3 (the job does not run there): counts connections to PORT and what they sent
# (latin-1), closing each at once; exits when its stdin closes (or after 120 s).
_LISTEN = r'''
import json, select, socket, sys, time
srv = socket.create_server(("0.0.0.0", int(sys.argv[1])))
print("ready", flush=True)
conns, got, deadline = 0, b"", time.monotonic() + 120
while time.monotonic() < deadline:
    r, _, _ = select.select([srv, sys.stdin], [], [], 0.5)
    if sys.stdin in r and not sys.stdin.readline():
        break
    if srv in r:
        c, _ = srv.accept()
        conns += 1
        c.settimeout(0.5)
        try:
            got += c.recv(65536)
        except OSError:
            pass
        c.close()
print(json.dumps({"conns": conns, "got": got.decode("latin-1")}), flush=True)
'''
PORT = 4999
BACKENDS = ('python -c "from qiskit_ibm_runtime import QiskitRuntimeService; '
            'print(QiskitRuntimeService().backends())"')


def test_forged_primary_in_job_name(mn: MultiCluster) -> None:
    node = mn.exec("scontrol", "-o", "show", "node", "qnode3").stdout
    m = re.search(r"\bNodeAddr=(\S+)", node)
    assert m, node
    forged = f"{m.group(1)}:{PORT}"
    listener = subprocess.Popen(
        [sys.executable, str(mn.script), "exec", "--node", "qnode3", "--",
         sys.executable, "-c", _LISTEN, str(PORT)],
        env=script_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert listener.stdout is not None and listener.stdout.readline().strip() == "ready"
        name = f"x AdminComment=qpu backend=ibm_fez lanes=1 primary={forged} run=0"
        job = mn.submit(f"srun -l bash -c 'hostname; {BACKENDS}'\n", "-N", "2",
                        "-w", "qnode1,qnode2", "-J", name, "-p", "quantum", "-L", "ibm_fez:1",
                        "--q_backend=ibm_fez", timeout=120)
        line = mn.exec("scontrol", "-o", "show", "job", job.id).stdout
        # the attack: what the relays read before (the first match in the text) is forged
        old = qpu_comment(record_from_text(job.id, line).admin_comment)
        assert old is not None and old.primary == forged, line
    finally:
        out, _ = listener.communicate("", timeout=60)
    seen = json.loads(out.strip().splitlines()[-1])
    print(f"forged primary {forged}: {seen['conns']} connections; job {job.state}")
    assert seen["conns"] == 0, seen  # the relay never went there
    text = job.output()
    assert job.state == "COMPLETED", text
    assert text.count("IBMBackend('ibm_fez')") == 2, text  # both nodes' tasks served
