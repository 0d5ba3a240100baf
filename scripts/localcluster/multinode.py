"""The several-node cluster: `up --nodes N [--accounting] [--name NAME]`.

A controller namespace NS_PREFIX-ctl (slurmctld, munged, the emulator and, with accounting,
mariadbd + slurmdbd) holding a bridge with CTL_ADDR, and one namespace per compute node
NS_PREFIX-qnodeI joined to it by a veth pair, holding NODE_ADDR(I) plus its own `lo`
(127.0.0.1/32, 127.0.0.2/32). Every address is in 127.0.0.0/8: the kernel routes such
addresses off `lo` only with net.ipv4.conf.<if>.route_localnet=1 on the sending and receiving
interface (without it, connect() fails with EINVAL), and only once `lo` holds 127.0.0.1/32
instead of the default 127.0.0.1/8 (whose local route would swallow 127.77.0.11 in every
namespace). Each node's slurmd runs in its own UTS namespace (hostname qnodeI) and mount
namespace where STATE/nodes/qnodeI is bound over STATE/node: the node's "local disk" holding
its qproxy config, secrets, state and audit dirs, so plugstack.conf's one config= path means
a different file on every node, as on real compute nodes.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from scripts.localcluster import cgroups, configs, daemons
from scripts.localcluster.settings import Settings
from scripts.localcluster.slurmroot import netns_exists, userspec
from scripts.localcluster.system import (
    build_plugin,
    chroot_binds,
    chroot_root,
    die,
    ensure_db_packages,
    ensure_packages,
    ensure_qproxy,
    ensure_users,
    log,
    print_env,
    qproxy_bin,
    run,
    slurm_env,
    slurm_version,
    slurmroot,
    wait_for,
)

BRIDGE = "qbr0"  # inside the controller namespace: names never meet another cluster's
UP_STATES = ("idle", "mixed", "allocated", "completing")


def ns_cmd(s: Settings, ns: str, cmd: list[str], user: str | None = None,
           node: str | None = None, chroot: bool = True) -> list[str]:
    """CMD in network namespace NS (exec'ed in place: the PID is CMD's); for a compute node
    also in its own UTS namespace (hostname = node) and mount namespace (its private dir on
    STATE/node); for chroot suites inside the chroot (chroot=False: the host's binaries)."""
    root = chroot_root(s) if chroot and s.chroot else Path("/")
    pre: list[str] = []
    if node is not None:
        target = root / s.node_dir.relative_to("/")
        script = (f"hostname {node} && mount --bind {s.nodes_dir / node} {target} && "
                  'exec "$@"')
        pre = ["unshare", "--uts", "--mount", "sh", "-c", script, "sh"]
    if root != Path("/"):
        # chroot(1) starts in /: keep the caller's directory (bound at the same path)
        keep = ["sh", "-c", 'cd "$0" 2>/dev/null || cd /; exec "$@"', os.getcwd()]
        inner = ["chroot", *(userspec(user) if user else []), str(root), *keep, *cmd]
    else:
        inner = ["runuser", "-u", user, "--", *cmd] if user else cmd
    return ["ip", "netns", "exec", ns, *pre, *inner]


def env(s: Settings) -> dict[str, str]:
    return dict(slurm_env(s), MYSQL_UNIX_PORT=str(s.db_sock))


def ctl(s: Settings, *cmd: str, user: str | None = None, check: bool = False,
        ) -> subprocess.CompletedProcess[str]:
    """A Slurm command in the controller namespace (where users' commands run here)."""
    return run(*ns_cmd(s, s.ctl_ns, list(cmd), user=user), check=check, capture_output=True,
               env=env(s))


# ---------------------------------------------------------------------------- namespaces
def ipn(ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run("ip", "-n", ns, *args, check=check, capture_output=True)


def _lo(ns: str) -> None:
    """lo up with 127.0.0.1/32 (not /8, see above) and 127.0.0.2/32 (23.02+ daemons)."""
    ipn(ns, "link", "set", "lo", "up")
    have = ipn(ns, "-o", "addr", "show", "dev", "lo").stdout
    if "127.0.0.1/8" in have:
        ipn(ns, "addr", "del", "127.0.0.1/8", "dev", "lo")
    for addr in ("127.0.0.1/32", "127.0.0.2/32"):
        if addr not in have:
            ipn(ns, "addr", "add", addr, "dev", "lo")


def _localnet(ns: str, dev: str) -> None:
    run("ip", "netns", "exec", ns, "sysctl", "-qw", f"net.ipv4.conf.{dev}.route_localnet=1")


def netns_up(s: Settings) -> None:
    """Namespaces, bridge, veth pairs and addresses; idempotent."""
    for ns in (s.ctl_ns, *(s.node_ns(n) for n in s.node_names)):
        if not netns_exists(ns):
            run("ip", "netns", "add", ns)
        _lo(ns)
    if ipn(s.ctl_ns, "link", "show", BRIDGE, check=False).returncode != 0:
        ipn(s.ctl_ns, "link", "add", BRIDGE, "type", "bridge")
    ipn(s.ctl_ns, "link", "set", BRIDGE, "up")
    ipn(s.ctl_ns, "addr", "replace", f"{s.ctl_addr}/24", "dev", BRIDGE)
    _localnet(s.ctl_ns, BRIDGE)
    for node in s.node_names:
        ns, port = s.node_ns(node), f"v{node}"
        if ipn(s.ctl_ns, "link", "show", port, check=False).returncode != 0:
            ipn(s.ctl_ns, "link", "add", port, "type", "veth", "peer", "name", "eth0",
                "netns", ns)
        ipn(s.ctl_ns, "link", "set", port, "master", BRIDGE)
        ipn(s.ctl_ns, "link", "set", port, "up")
        ipn(ns, "link", "set", "eth0", "up")
        ipn(ns, "addr", "replace", f"{s.node_addr(node)}/24", "dev", "eth0")
        _localnet(ns, "eth0")


def namespaces(s: Settings) -> list[str]:
    """This cluster's namespaces that exist (whatever its node count was)."""
    out = run("ip", "netns", "list", capture_output=True, check=False).stdout
    names = [ln.split()[0] for ln in out.splitlines() if ln.strip()]
    return [n for n in names if n == s.ctl_ns or re.fullmatch(re.escape(s.ns_prefix) +
                                                              r"-qnode\d+", n)]


def netns_down(s: Settings) -> None:
    """Stop what is left inside our namespaces (job proxies, steps: all started by this
    cluster), delete them (the veth pairs and the bridge go with them), unmount a chroot."""
    spaces = namespaces(s)
    daemons.stop_namespace_processes(spaces)
    for ns in spaces:
        run("ip", "netns", "delete", ns, check=False)
    if s.chroot:
        slurmroot(s, "umount", s.suite, "--keep-netns", check=False)
    cgroups.teardown(s)


# ---------------------------------------------------------------------------- accounting
def start_mariadb(s: Settings) -> None:
    """mariadbd from the host's packages on a unix socket only (--skip-networking), data in
    the state dir, initialised once with mariadb-install-db (root@localhost: unix_socket)."""
    data = s.db / "data"
    # Its own tmpdir: a MariaDB starting (or bootstrapping) deletes every `#sql*` file in
    # its tmpdir as a leftover, so two clusters coming up at once on the shared /tmp broke
    # each other's mariadb-install-db ("Unknown table 'mysql.tmp_user_sys'", seen when
    # scripts/test's lanes started two several-node clusters in the same second).
    tmp = s.db / "tmp"
    for d in (s.db, data, tmp):
        d.mkdir(exist_ok=True)
    shutil.chown(s.db, "mysql", "mysql")
    shutil.chown(tmp, "mysql", "mysql")
    s.db.chmod(0o750)
    if not (data / "mysql").is_dir():
        shutil.chown(data, "mysql", "mysql")
        out = run("mariadb-install-db", "--no-defaults", "--user=mysql", f"--datadir={data}",
                  f"--tmpdir={tmp}", "--auth-root-authentication-method=socket",
                  "--skip-test-db", capture_output=True, check=False)
        if out.returncode != 0:
            die(f"mariadb-install-db failed:\n{out.stdout}{out.stderr}")
    s.db_sock.unlink(missing_ok=True)
    daemons.spawn(s, "mariadbd", ns_cmd(s, s.ctl_ns, [
        "mariadbd", "--no-defaults", "--user=mysql", f"--datadir={data}", f"--tmpdir={tmp}",
        f"--socket={s.db_sock}", "--skip-networking", f"--pid-file={s.db / 'mariadbd.pid'}",
        f"--log-error={s.logs / 'mariadbd.log'}", "--innodb-buffer-pool-size=256M",
        "--innodb-lock-wait-timeout=900", "--innodb-log-file-size=64M"], chroot=False), env(s))


def db_ready(s: Settings) -> bool:
    return s.db_sock.exists() and run(
        "mariadb-admin", "--no-defaults", f"--socket={s.db_sock}", "-u", "root", "ping",
        capture_output=True, check=False).returncode == 0


def sacctmgr(s: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return ctl(s, "sacctmgr", "-i", *args)


def setup_accounts(s: Settings) -> None:
    """The cluster, accounts physics and chemistry, JOB_USER in both (default physics) and
    JOB_USER2 in chemistry only. sacctmgr `add` of what exists says so and changes nothing."""
    name, accounts = s.cluster_name, s.accounts
    if name not in ctl(s, "sacctmgr", "-n", "-P", "list", "cluster",
                       "format=cluster").stdout.split():
        sacctmgr(s, "add", "cluster", name)

    def associations() -> list[str]:
        return ctl(s, "sacctmgr", "-n", "-P", "show", "assoc", f"cluster={name}",
                   "format=account,user").stdout.split()

    have = associations()
    for account in accounts:
        if f"{account}|" not in have:
            sacctmgr(s, "add", "account", account, f"cluster={name}",
                     f"description={account}", f"organization={account}")
    for account, users in accounts.items():
        for user in users:
            if f"{account}|{user}" not in have:
                default = next(a for a, us in accounts.items() if user in us)
                sacctmgr(s, "add", "user", user, f"account={account}",
                         f"defaultaccount={default}", f"cluster={name}")
    have = associations()
    missing = [f"{a}|{u}" for a, us in accounts.items() for u in us if f"{a}|{u}" not in have]
    if missing:
        die(f"sacctmgr did not create the associations {missing}: {have}")


# ---------------------------------------------------------------------------- commands
def node_states(s: Settings) -> dict[str, str]:
    out = ctl(s, "sinfo", "-h", "-N", "-p", "classical", "-o", "%N %T")
    if out.returncode != 0:
        return {}
    return dict(ln.split() for ln in out.stdout.splitlines() if len(ln.split()) == 2)


def healthy(s: Settings) -> bool:
    r = daemons.running(s)
    states = node_states(s)
    return all(n in r for n in s.daemons) and len(states) == s.nodes and all(
        v.rstrip("*") in UP_STATES for v in states.values())


def up(s: Settings, t0: float) -> int:
    ensure_packages(s)
    if s.accounting:
        ensure_db_packages(s)
    ensure_qproxy(s)
    s.state.mkdir(parents=True, exist_ok=True)
    ensure_users(s)
    if s.chroot:
        chroot_binds(s)
    in_cgroups = cgroups.setup(s)
    if in_cgroups and s.chroot:
        cgroups.bind_into(s, chroot_root(s))
    netns_up(s)
    plugin, changed = build_plugin(s)
    changed = configs.write_multinode(s, plugin, in_cgroups) or changed
    if healthy(s) and not changed:
        log(f"already up ({time.monotonic() - t0:.1f}s)")
        print_env(s)
        return 0
    if daemons.running(s):
        log("configuration changed or a daemon is missing: restarting")
        down(s, quiet=True, teardown_ns=False)
    s.emu_ready.unlink(missing_ok=True)
    s.s3_ready.unlink(missing_ok=True)
    daemons.spawn(s, "s3", ns_cmd(s, s.ctl_ns, [
        sys.executable, "-m", "qproxy.emulator.s3local", *s.s3_args()], chroot=False), env(s))
    daemons.spawn(s, "emulator", ns_cmd(s, s.ctl_ns, [
        str(qproxy_bin()), "emulator", "--ready-file", str(s.emu_ready),
        "--host", s.ctl_addr, "--port", str(s.emulator_port), "--api-key-file",
        str(s.emu_keys), *s.emulator_args()], chroot=False), env(s))
    # one munged; its path-named socket is reachable from every namespace
    daemons.start_munged(s, ns_cmd(s, s.ctl_ns, []))
    if s.accounting:
        start_mariadb(s)
        wait_for(s, "mariadbd", lambda: db_ready(s), 60)
        t1 = time.monotonic()
        daemons.spawn(s, "slurmdbd", ns_cmd(s, s.ctl_ns, ["slurmdbd", "-D"]), env(s))
        wait_for(s, "slurmdbd",
                 lambda: ctl(s, "sacctmgr", "-n", "list", "cluster").returncode == 0, 60)
        setup_accounts(s)
        log(f"accounting ready in {time.monotonic() - t1:.1f}s")
    daemons.spawn(s, "slurmctld",
                  ns_cmd(s, s.ctl_ns, ["slurmctld", "-D", "-f", str(s.slurm_conf)]), env(s))
    for node in s.node_names:
        daemons.spawn(s, f"slurmd-{node}", ns_cmd(s, s.node_ns(node), [
            "slurmd", "-D", "-N", node, "-f", str(s.slurm_conf)], node=node), env(s))
    wait_for(s, "all nodes idle", lambda: (st := node_states(s)) and len(st) == s.nodes and all(
        v == "idle" for v in st.values()), 60)
    wait_for(s, "emulator ready file",
             lambda: s.emu_ready.exists() or not daemons.pid_of(s, "emulator"), 180)
    if not daemons.pid_of(s, "emulator"):
        die(f"the emulator exited; see {s.logs}/emulator.out")
    wait_for(s, "S3 ready file", lambda: s.s3_ready.exists() or not daemons.pid_of(s, "s3"), 60)
    if not daemons.pid_of(s, "s3"):
        die(f"the S3 server exited; see {s.logs}/s3.out")
    major, minor = slurm_version(s)
    log(f"up in {time.monotonic() - t0:.1f}s; Slurm {major}.{minor:02d} ({s.suite}); "
        f"{s.nodes} node(s) {', '.join(f'{n}={s.node_addr(n)}' for n in s.node_names)}; "
        f"controller {s.ctl_addr} in {s.ctl_ns}; accounting {'on' if s.accounting else 'off'}")
    print_env(s)
    return 0


def reap(s: Settings) -> None:
    """`qproxy hook reap --all` on every node (in its namespaces: its own state dir)."""
    if not qproxy_bin().exists():
        return
    for node in s.node_names:
        if netns_exists(s.node_ns(node)) and (s.nodes_dir / node / "qproxy.toml").exists():
            run(*ns_cmd(s, s.node_ns(node), [str(qproxy_bin()), "hook", "reap", "--config",
                                             str(s.node_conf), "--all"], node=node),
                check=False, env=env(s), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def cleanup_failed_up(s: Settings, started: dict[str, int], nothing_before: bool) -> None:
    """After a failed `up`: reap, stop what it started; delete the namespaces if nothing ran
    before."""
    if started:
        reap(s)
    daemons.stop_pids(started)
    daemons.forget(s, started)
    if nothing_before:
        netns_down(s)


def down(s: Settings, quiet: bool = False, teardown_ns: bool = True) -> int:
    pids = daemons.running(s)
    if any(n.startswith("slurmd-") for n in pids):
        reap(s)
    daemons.stop_pids(pids)
    daemons.forget(s, s.daemons)
    if teardown_ns:
        netns_down(s)
    if not quiet:
        log("stopped " + (", ".join(f"{n}[{p}]" for n, p in pids.items()) or "nothing"))
    return 0


def status(s: Settings) -> int:
    r = daemons.running(s)
    for name in s.daemons:
        print(f"{name:16} {'running pid ' + str(r[name]) if name in r else 'stopped'}")
    for node, state in node_states(s).items():
        print(f"{node:16} {state} {s.node_addr(node)} in {s.node_ns(node)}")
    ready = s.emu_ready.exists() and "emulator" in r
    print(f"{'emulator':16} {'ready' if ready else 'not ready'} {s.emulator_url}")
    return 0 if healthy(s) else 1


def exec_(s: Settings, argv: list[str]) -> int:
    """`exec [--node qnodeI] [--user U] -- CMD...`: CMD in the controller namespace (where
    users submit) or, with --node, on that node (its namespaces, its private dir)."""
    if "--" not in argv:
        die("usage: exec [--node qnodeI] [--user U] -- CMD...")
    opts, cmd = argv[:argv.index("--")], argv[argv.index("--") + 1:]
    node = opts[opts.index("--node") + 1] if "--node" in opts else None
    user = opts[opts.index("--user") + 1] if "--user" in opts else None
    argv_ = ns_cmd(s, s.node_ns(node) if node else s.ctl_ns, cmd, user=user, node=node)
    os.execvpe(argv_[0], argv_, env(s))
    return 127

