"""The single-node cluster: munged, slurmctld, slurmd and the emulator on host loopback (the
host's Slurm), or inside the network namespace qproxy-SUITE (`--slurm bookworm`: the host's
Slurm; trixie/sid: Slurm and munge also inside the suite's chroot, the emulator is the host
interpreter in the netns). The job user's Slurm commands must run there too:
`scripts/slurmroot exec SUITE --user qpuuser -- sbatch ...`."""

from __future__ import annotations

import subprocess
import sys
import time

from scripts.localcluster import cgroups, configs, daemons
from scripts.localcluster.settings import EMULATOR_DEFAULT_PORT, Settings
from scripts.localcluster.system import (
    build_plugin,
    chroot_binds,
    chroot_root,
    die,
    ensure_packages,
    ensure_qproxy,
    ensure_users,
    has_emulator,
    inside,
    log,
    print_env,
    qproxy_bin,
    run,
    slurm_env,
    slurm_version,
    slurmroot,
    wait_for,
)

UP_STATES = ("idle", "mixed", "allocated", "completing")


def setup_namespace(s: Settings) -> None:
    """netns (lo + 127.0.0.2) and, for chroot suites, the chroot's mounts: private /dev,
    /proc, /sys, and the host paths the cluster and jobs need at the same paths inside."""
    if s.netns is None:
        return
    slurmroot(s, "netns", s.suite)
    if s.chroot:
        chroot_binds(s)


def teardown(s: Settings) -> None:
    """Stop what is left in the netns, unmount everything below the chroot and delete the
    netns (`slurmroot umount`); kill what is left in the cluster's cgroups and remove them."""
    if s.netns is not None:
        daemons.stop_namespace_processes([s.netns])
        slurmroot(s, "umount", s.suite, check=False)
    cgroups.teardown(s)


def start_emulator(s: Settings) -> None:
    s.emu_ready.unlink(missing_ok=True)
    probe = run(sys.executable, "-c", "import qproxy.emulator.cli", check=False,
                capture_output=True)
    if probe.returncode != 0:
        log("WARNING: qproxy.emulator.cli is not importable yet; not starting the emulator")
        return
    port = [] if s.emulator_port == EMULATOR_DEFAULT_PORT else ["--port", str(s.emulator_port)]
    netns = [] if s.netns is None else ["ip", "netns", "exec", s.netns]  # host root, no chroot
    daemons.spawn(s, "emulator", [
        *netns, str(qproxy_bin()), "emulator", "--ready-file", str(s.emu_ready), *port,
        "--api-key-file", str(s.emu_keys), *s.emulator_args()], slurm_env(s))


def start_s3(s: Settings) -> None:
    """The on-prem system's S3 store (qproxy.emulator.s3local: SeaweedFS), host root."""
    s.s3_ready.unlink(missing_ok=True)
    netns = [] if s.netns is None else ["ip", "netns", "exec", s.netns]
    daemons.spawn(s, "s3", [*netns, sys.executable, "-m", "qproxy.emulator.s3local",
                            *s.s3_args()], slurm_env(s))


def node_state(s: Settings) -> str:
    out = run(*inside(s), "sinfo", "-h", "-N", "-o", "%T", check=False, capture_output=True,
              env=slurm_env(s))
    return out.stdout.strip() if out.returncode == 0 else ""


def healthy(s: Settings) -> bool:
    r = daemons.running(s)
    emu_ok = ("emulator" in r and "s3" in r) or not has_emulator(s)
    # a node running jobs is healthy too: never restart under a user's job
    return all(n in r for n in ("munged", "slurmctld", "slurmd")) and emu_ok and (
        node_state(s).rstrip("*") in UP_STATES)


def reap(s: Settings, everything: bool = False) -> None:
    """`qproxy hook reap`: stop proxies of jobs Slurm no longer runs (--all: of every job).
    It asks Slurm, so it runs where this cluster's Slurm commands live."""
    if not qproxy_bin().exists():
        return
    run(*inside(s), str(qproxy_bin()), "hook", "reap", "--config", str(s.qproxy_conf),
        *(["--all"] if everything else []), check=False, env=slurm_env(s),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def up(s: Settings, t0: float) -> int:
    ensure_packages(s)
    ensure_qproxy(s)
    s.state.mkdir(parents=True, exist_ok=True)
    ensure_users(s)
    setup_namespace(s)
    in_cgroups = cgroups.setup(s)
    if in_cgroups and s.chroot:
        cgroups.bind_into(s, chroot_root(s))
    plugin, changed = build_plugin(s)
    changed = configs.write_single(s, plugin, in_cgroups) or changed
    state = node_state(s) if daemons.running(s).get("slurmctld") else ""
    if any(word in state for word in ("drain", "down", "fail")):
        log(f"node is {state}: resuming it")
        run(*inside(s), "scontrol", "update", f"nodename={configs.hostname()}",
            "state=resume", check=False, env=slurm_env(s))
        wait_for(s, "node idle", lambda: node_state(s) == "idle", 30)
    if healthy(s) and not changed:
        log(f"already up ({time.monotonic() - t0:.1f}s)")
        print_env(s)
        return 0
    if changed and daemons.running(s):
        log("configuration changed: restarting")
        down(s, quiet=True, teardown_ns=False)
    have = daemons.running(s)  # start only what is missing (e.g. slurmd restarted under jobs)
    if "s3" not in have:
        start_s3(s)
    if "emulator" not in have:
        start_emulator(s)
    if "munged" not in have:
        daemons.start_munged(s, inside(s))
    if "slurmctld" not in have:
        daemons.spawn(s, "slurmctld", [*inside(s), "slurmctld", "-D", "-f", str(s.slurm_conf)],
                      slurm_env(s))
    if "slurmd" not in have:
        daemons.spawn(s, "slurmd", [*inside(s), "slurmd", "-D", "-f", str(s.slurm_conf)],
                      slurm_env(s))
    wait_for(s, "slurmctld", lambda: node_state(s) != "", 30)
    if not have:
        wait_for(s, "node idle", lambda: node_state(s) == "idle", 30)
    else:
        wait_for(s, "node up", lambda: node_state(s).rstrip("*") in UP_STATES, 30)
    if (s.pids / "emulator.pid").exists():
        wait_for(s, "emulator ready file",
                 lambda: s.emu_ready.exists() or not daemons.pid_of(s, "emulator"), 180)
        if not daemons.pid_of(s, "emulator"):
            die(f"the emulator exited; see {s.logs}/emulator.out")
    if (s.pids / "s3.pid").exists():
        wait_for(s, "S3 ready file", lambda: s.s3_ready.exists() or not daemons.pid_of(s, "s3"),
                 60)
        if not daemons.pid_of(s, "s3"):
            die(f"the S3 server exited; see {s.logs}/s3.out")
    reap(s)  # proxies/records of jobs that ended while slurmd was away
    major, minor = slurm_version(s)
    log(f"up in {time.monotonic() - t0:.1f}s; Slurm {major}.{minor:02d}"
        f" ({s.suite}); job user: {s.job_user}")
    print_env(s)
    return 0


def cleanup_failed_up(s: Settings, started: dict[str, int], nothing_before: bool) -> None:
    """After a failed `up`: stop what it started; delete the namespace if nothing ran before."""
    daemons.stop_pids(started)
    daemons.forget(s, started)
    if nothing_before:
        teardown(s)


def down(s: Settings, quiet: bool = False, teardown_ns: bool = True) -> int:
    """Stop the daemons (and job proxies); with teardown_ns also unmount the chroot and
    delete the netns (not when `up` restarts the daemons for a changed config)."""
    pids = daemons.running(s)
    if pids.get("slurmd"):
        reap(s, everything=True)
    daemons.stop_pids(pids)
    daemons.forget(s, s.daemons)
    if teardown_ns:
        teardown(s)
    if not quiet:
        log("stopped " + (", ".join(f"{n}[{p}]" for n, p in pids.items()) or "nothing"))
    return 0


def status(s: Settings) -> int:
    r = daemons.running(s)
    for name in s.daemons:
        print(f"{name:10} {'running pid ' + str(r[name]) if name in r else 'stopped'}")
    print(f"{'node':10} {node_state(s) or '-'}")
    ready = s.emu_ready.exists() and "emulator" in r
    print(f"{'emulator':10} {'ready' if ready else 'not ready'}")
    return 0 if healthy(s) else 1
