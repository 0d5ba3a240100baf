"""The local Slurm clusters of the demo, the tests and the benchmarks, as an importable package
(stdlib only: `scripts/cluster` runs before qproxy is installed).

  settings    ONE frozen Settings built from argv/env: every path, port, name and address
  slurmroot   chroots of other Debian releases' Slurm, their mounts and network namespaces
  system      host plumbing: run/log, installs (apt, qproxy, job users), the SPANK plugin
              build, where a Slurm command runs, the Slurm version
  configs     the config files: ONE slurm.conf renderer with its single- and several-node
              parts, gres/cgroup/plugstack/slurmdbd.conf, qproxy.toml, env.sh
  daemons     processes by PID: spawn with a PID file, find (PID-reuse guard), stop all at once
  single      the single-node cluster (host loopback or the netns qproxy-SUITE)
  multinode   the several-node cluster (a namespace per node, controller, slurmdbd + MariaDB)
  cli         `scripts/cluster up|down|status|env|install|exec`

Nothing here imports anything at package import time: `scripts/slurmroot exec` (the prefix of
every Slurm command on a chroot suite) stays a fast start.
"""
