"""Every fact of a local cluster in ONE frozen object, built from the command line and the
environment: which Slurm, how many nodes, where the state lives, the ports, users, names and
addresses. `scripts/cluster` builds it once from argv; tests and benchmarks build the same
object (`Settings.from_argv([...])`) instead of re-deriving paths and ports, and hand it back
to `scripts/cluster` as environment variables (`Settings.env()`).

Which Slurm (QPROXY_CLUSTER_SLURM or --slurm): `host` (default: the host's Debian Slurm,
22.05 on bookworm, on host loopback), `bookworm` (the host's Slurm inside the network
namespace qproxy-bookworm), `trixie` (24.11) or `sid` (26.05): Debian's packages in a chroot
built by scripts/slurmroot, every daemon inside the netns qproxy-SUITE.

Several nodes (--nodes N > 1 and/or --accounting): a controller namespace NS_PREFIX-ctl and
one namespace per node NS_PREFIX-qnodeI, see localcluster.multinode. --nodes 1 without
--accounting is the single-node cluster.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SUITES = ("host", "bookworm", "trixie", "sid")
CHROOT_SUITES = ("trixie", "sid")  # built by scripts/slurmroot
VALUE_OPTS = ("--slurm", "--nodes", "--name")
FLAG_OPTS = ("--accounting", "--no-accounting")
CPUS = 8  # advertised with SlurmdParameters=config_overrides, more than the 2 real cores
PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge", "libslurm-dev")
DB_PACKAGES = ("slurmdbd", "mariadb-server")
SINGLE_DAEMONS = ("munged", "slurmctld", "slurmd", "s3", "emulator")
EMULATOR_DEFAULT_PORT = 8290
# what the emulator runs (its own lanes; QPROXY_CLUSTER_FEZ_LANES changes only Slurm's and
# qproxy's view of ibm_fez): both IBM APIs, fake_marrakesh being the on-prem system behind the
# Quantum System API (resource ibm_onprem, its HPC lanes = its licences)
EMULATOR_BACKENDS = "fake_fez,fake_torino,fake_marrakesh"
EMULATOR_LANES = "fake_fez=2,fake_torino=1,fake_marrakesh=2"
ONPREM_LANES = 2
S3_BUCKET = "qproxy-onprem"
INSTANCE = "crn:v1:bluemix:public:quantum-computing:us-east:a/qproxy:emulator::"


def options(argv: Sequence[str]) -> list[str]:
    """The part of a command line that holds our options: everything before `--` (after it
    comes `exec`'s command, whose own `--nodes 2` is not ours)."""
    argv = list(argv)
    return argv[:argv.index("--")] if "--" in argv else argv


def _opt(opts: list[str], name: str, env: Mapping[str, str], var: str, default: str) -> str:
    """`NAME VALUE` anywhere on the command line wins over the environment variable."""
    if name in opts[:-1]:
        return opts[opts.index(name) + 1]
    return env.get(var, default) or default


def _flag(opts: list[str], env: Mapping[str, str], default: bool) -> bool:
    """--accounting / --no-accounting win over QPROXY_CLUSTER_ACCOUNTING=1|0."""
    if "--accounting" in opts:
        return True
    if "--no-accounting" in opts:
        return False
    value = env.get("QPROXY_CLUSTER_ACCOUNTING", "")
    return default if value == "" else value.lower() not in ("0", "no", "false", "off")



def netns_name(suite: str) -> str:
    """One network namespace per suite: the cluster's ports never meet the host's."""
    return f"qproxy-{suite}"

@dataclass(frozen=True)
class Settings:
    suite: str
    nodes: int
    accounting: bool
    name: str  # several nodes: the namespace prefix qproxy-NAME and the default state dir
    state: Path
    job_user: str
    # the neighbour of tests/slurm/test_hostile_jobs.py; with accounting: in chemistry only
    job_user2: str
    ctld_port: int
    slurmd_port: int
    emulator_port: int
    # ibm_fez's lanes: its licence count, its qpu GRES share and the resource's `lanes` in
    # the qproxy config (bench 10 runs a 4-lane licence); the emulator's lanes stay as they are
    fez_lanes: int
    subnet: str  # several nodes: the controller is SUBNET.1, node I is SUBNET.(10+I)
    dbd_port: int
    s3_port: int  # the on-prem system's S3 store (SeaweedFS), beside the emulator
    repo: Path = REPO

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_argv(cls, argv: Sequence[str] = (), env: Mapping[str, str] | None = None,
                  ) -> Settings:
        """From `scripts/cluster`'s options (before any `--`) and QPROXY_CLUSTER_* variables
        (options win); ENV defaults to the process environment."""
        env = os.environ if env is None else env
        opts = options(argv)
        suite = _opt(opts, "--slurm", env, "QPROXY_CLUSTER_SLURM", "host")
        nodes = int(_opt(opts, "--nodes", env, "QPROXY_CLUSTER_NODES", "1"))
        accounting = _flag(opts, env, nodes > 1)
        name = _opt(opts, "--name", env, "QPROXY_CLUSTER_NAME",
                    "mn" if suite == "host" else f"mn-{suite}")
        if nodes > 1 or accounting:
            default_state = REPO / ".state" / f"cluster-{name}"
        else:
            default_state = REPO / ".state" / ("cluster" if suite == "host"
                                               else f"cluster-{suite}")
        ctld_port = int(env.get("QPROXY_CLUSTER_CTLD_PORT") or "16817")
        return cls(
            suite=suite, nodes=nodes, accounting=accounting, name=name,
            state=Path(env.get("QPROXY_CLUSTER_DIR") or default_state).resolve(),
            job_user=env.get("QPROXY_CLUSTER_USER") or "qpuuser",
            job_user2=env.get("QPROXY_CLUSTER_USER2") or "qpuuser2",
            ctld_port=ctld_port,
            slurmd_port=int(env.get("QPROXY_CLUSTER_SLURMD_PORT") or "16818"),
            emulator_port=int(env.get("QPROXY_CLUSTER_EMULATOR_PORT")
                              or str(EMULATOR_DEFAULT_PORT)),
            fez_lanes=int(env.get("QPROXY_CLUSTER_FEZ_LANES") or "2"),
            subnet=env.get("QPROXY_CLUSTER_SUBNET") or "127.77.0",
            dbd_port=int(env.get("QPROXY_CLUSTER_DBD_PORT") or str(ctld_port + 2)),
            s3_port=int(env.get("QPROXY_CLUSTER_S3_PORT") or str(
                int(env.get("QPROXY_CLUSTER_EMULATOR_PORT") or EMULATOR_DEFAULT_PORT) + 1)),
        )

    def env(self) -> dict[str, str]:
        """The QPROXY_CLUSTER_* variables under which `scripts/cluster` (no options) builds
        exactly these settings: how tests hand their cluster to the script."""
        return {
            "QPROXY_CLUSTER_SLURM": self.suite,
            "QPROXY_CLUSTER_NODES": str(self.nodes),
            "QPROXY_CLUSTER_ACCOUNTING": str(int(self.accounting)),
            "QPROXY_CLUSTER_NAME": self.name,
            "QPROXY_CLUSTER_DIR": str(self.state),
            "QPROXY_CLUSTER_USER": self.job_user,
            "QPROXY_CLUSTER_USER2": self.job_user2,
            "QPROXY_CLUSTER_CTLD_PORT": str(self.ctld_port),
            "QPROXY_CLUSTER_SLURMD_PORT": str(self.slurmd_port),
            "QPROXY_CLUSTER_EMULATOR_PORT": str(self.emulator_port),
            "QPROXY_CLUSTER_FEZ_LANES": str(self.fez_lanes),
            "QPROXY_CLUSTER_SUBNET": self.subnet,
            "QPROXY_CLUSTER_DBD_PORT": str(self.dbd_port),
            "QPROXY_CLUSTER_S3_PORT": str(self.s3_port),
        }

    def problem(self) -> str | None:
        """Why these settings name no cluster `scripts/cluster` can run, or None."""
        if self.suite not in SUITES:
            return f"unknown Slurm {self.suite!r} (one of {', '.join(SUITES)})"
        if self.nodes < 1:
            return f"--nodes must be at least 1, got {self.nodes}"
        if self.multi and self.suite == "bookworm":
            return "several nodes run the host's Slurm as --slurm host, not bookworm"
        return None

    # ------------------------------------------------------------------ layout
    @property
    def multi(self) -> bool:
        """The several-node layout (namespaces per node and a controller namespace)."""
        return self.nodes > 1 or self.accounting

    @property
    def chroot(self) -> bool:
        """Slurm and munge from a chroot built by scripts/slurmroot."""
        return self.suite in CHROOT_SUITES

    @property
    def netns(self) -> str | None:
        """The single-node cluster's network namespace (None: host loopback or several
        nodes, which have their own)."""
        return None if self.suite == "host" or self.multi else netns_name(self.suite)

    # ------------------------------------------------------------------ the state dir
    @property
    def munge(self) -> Path:
        return self.state / "munge"

    @property
    def munge_socket(self) -> Path:
        return self.munge / "munge.socket"

    @property
    def slurm_dir(self) -> Path:
        return self.state / "slurm"

    @property
    def logs(self) -> Path:
        return self.state / "log"

    @property
    def pids(self) -> Path:
        return self.state / "pid"

    @property
    def lib(self) -> Path:
        """Where the SPANK plugin is installed."""
        return self.state / "lib"

    @property
    def build_dir(self) -> Path:
        """The plugin's out-of-tree build (one per state dir: one Slurm version each)."""
        return self.state / "build"

    @property
    def slurm_conf(self) -> Path:
        return self.slurm_dir / "slurm.conf"

    @property
    def qproxy_conf(self) -> Path:
        """The single-node cluster's admin config (several nodes: node_conf)."""
        return self.state / "qproxy.toml"

    @property
    def env_file(self) -> Path:
        return self.state / "env.sh"

    @property
    def emu_ready(self) -> Path:
        return self.state / "emulator.ready"

    @property
    def s3_dir(self) -> Path:
        """The S3 server's data, config and its key pair (``keys.json``, root 0600)."""
        return self.state / "s3"

    @property
    def s3_ready(self) -> Path:
        return self.state / "s3.ready"

    @property
    def s3_url(self) -> str:
        return f"http://{self.ctld_addr}:{self.s3_port}"

    def emulator_args(self) -> list[str]:
        """What every cluster's emulator serves: both IBM APIs on its devices."""
        return ["--backends", EMULATOR_BACKENDS, "--lanes", EMULATOR_LANES, "--api", "both"]

    def s3_args(self) -> list[str]:
        return ["--dir", str(self.s3_dir), "--bucket", S3_BUCKET, "--host", self.ctld_addr,
                "--port", str(self.s3_port), "--ready-file", str(self.s3_ready),
                "--credentials-file", str(self.s3_dir / "keys.json")]

    @property
    def emu_keys(self) -> Path:
        """The emulator's vendor key (random per state dir)."""
        return self.state / "emulator.keys"

    @property
    def jobs_dir(self) -> Path:
        """World-writable (sticky) work directories of test and demo jobs."""
        return self.state / "jobs"

    @property
    def run_dir(self) -> Path:
        """The single-node qproxy [paths].state_dir."""
        return self.state / "run"

    @property
    def audit_dir(self) -> Path:
        """The single-node qproxy [paths].audit_dir."""
        return self.state / "audit"

    # ------------------------------------------------------------------ Slurm's view
    @property
    def gres_count(self) -> int:
        """Node-local qpu lanes (ibm_fez + ibm_torino:1)."""
        return self.fez_lanes + 1

    @property
    def licenses(self) -> str:
        return f"ibm_fez:{self.fez_lanes},ibm_torino:1,ibm_onprem:{ONPREM_LANES}"

    @property
    def daemons(self) -> tuple[str, ...]:
        """The PID-file names of what `up` starts, in start order."""
        if not self.multi:
            return SINGLE_DAEMONS
        acct = ("mariadbd", "slurmdbd") if self.accounting else ()
        return ("s3", "emulator", "munged", *acct, "slurmctld",
                *(f"slurmd-{n}" for n in self.node_names))

    @property
    def ctld_addr(self) -> str:
        return self.ctl_addr if self.multi else "127.0.0.1"

    @property
    def emulator_url(self) -> str:
        """The emulator as the centre sees it (several nodes: only from the controller's
        namespace)."""
        return f"http://{self.ctld_addr}:{self.emulator_port}"

    # ------------------------------------------------------------------ several nodes
    @property
    def ns_prefix(self) -> str:
        return f"qproxy-{self.name}"

    @property
    def ctl_ns(self) -> str:
        return f"{self.ns_prefix}-ctl"

    @property
    def ctl_addr(self) -> str:
        return f"{self.subnet}.1"

    @property
    def cluster_name(self) -> str:
        """slurm.conf's ClusterName (several nodes: per NAME, slurmdbd tells clusters apart
        by it)."""
        if not self.multi:
            return "qproxy"
        return re.sub(r"[^a-z0-9]", "_", f"qproxy_{self.name}".lower())

    @property
    def accounts(self) -> dict[str, list[str]]:
        """Accounts -> users (JOB_USER's default account is the first it is in)."""
        return {"physics": [self.job_user], "chemistry": [self.job_user, self.job_user2]}

    @property
    def node_names(self) -> list[str]:
        return [f"qnode{i}" for i in range(1, self.nodes + 1)]

    def node_addr(self, node: str) -> str:
        return f"{self.subnet}.{10 + int(node[5:])}"

    def node_ns(self, node: str) -> str:
        return f"{self.ns_prefix}-{node}"

    @property
    def nodes_dir(self) -> Path:
        """STATE/nodes/qnodeI: each node's "local disk"."""
        return self.state / "nodes"

    @property
    def node_dir(self) -> Path:
        """Per node: nodes_dir/qnodeI bound here in the node's mount namespace."""
        return self.state / "node"

    @property
    def node_conf(self) -> Path:
        """The one config= path of plugstack.conf: a different file on every node."""
        return self.node_dir / "qproxy.toml"

    @property
    def db(self) -> Path:
        return self.state / "db"

    @property
    def db_sock(self) -> Path:
        return self.db / "mysqld.sock"
