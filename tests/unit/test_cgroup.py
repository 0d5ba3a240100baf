"""qproxy.node.cgroup (where proxies live) and the local cluster's cgroup view, on texts
and temporary directories; the real thing: tests/slurm/test_cgroups.py."""

from __future__ import annotations

import os
from pathlib import Path

from qproxy.node import cgroup
from scripts.localcluster import cgroups, configs
from scripts.localcluster.settings import Settings

# this machine's layout (v1 controllers + cgroup2 on unified), plus a cluster's view of
# freezer below the state dir (a deeper root: that mount wins)
MOUNTINFO = """\
30 25 0:26 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
32 30 0:28 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
33 30 0:29 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
34 30 0:30 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
35 30 0:31 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct,release_agent=/x
90 25 0:28 /qproxy-c-1 /st\\040ate/cgroup/freezer rw - cgroup cgroup rw,freezer
"""


def test_mounts_one_per_hierarchy_the_deepest_root() -> None:
    got = {m.hierarchy: m for m in cgroup.mounts(MOUNTINFO)}
    assert set(got) == {"cpu", "freezer", "name=systemd", "cgroup2", "cpu,cpuacct"}
    assert got["freezer"] == cgroup.Mount("/st ate/cgroup/freezer", "/qproxy-c-1", "freezer")
    assert got["cgroup2"].point == "/sys/fs/cgroup/unified"


def _fake(tmp_path: Path, cpuset: bool = False) -> str:
    """A mountinfo naming TMP/h as a hierarchy's root (a directory standing in for it)."""
    (tmp_path / "h").mkdir()
    if cpuset:
        (tmp_path / "h" / "cpuset.cpus").write_text("0-1\n")
        (tmp_path / "h" / "cpuset.mems").write_text("0\n")
    return f"40 1 0:40 / {tmp_path}/h rw - cgroup cgroup rw,{'cpuset' if cpuset else 'pids'}\n"


def test_enter_writes_the_pid_into_the_groups_procs(tmp_path: Path) -> None:
    assert cgroup.enter("qproxy", 4242, _fake(tmp_path)) == []
    assert (tmp_path / "h/qproxy/cgroup.procs").read_text() == "4242"
    assert cgroup.enter("qproxy", 0, "") == []  # no cgroup fs mounted: nothing to do


def test_enter_gives_a_new_cpuset_group_its_parents_cpus(tmp_path: Path) -> None:
    info = _fake(tmp_path, cpuset=True)
    (tmp_path / "h/qproxy").mkdir()
    for name in ("cpuset.cpus", "cpuset.mems"):  # as the kernel makes them: empty
        (tmp_path / "h/qproxy" / name).write_text("")
    assert cgroup.enter("qproxy", 7, info) == []
    assert (tmp_path / "h/qproxy/cpuset.cpus").read_text() == "0-1"


def test_enter_refuses_a_group_others_may_write(tmp_path: Path) -> None:
    info = _fake(tmp_path)
    (tmp_path / "h/qproxy").mkdir()
    os.chmod(tmp_path / "h/qproxy", 0o775)
    [problem] = cgroup.enter("qproxy", 7, info)
    assert problem == f"cgroup {tmp_path}/h/qproxy is not root's alone; not entered"
    assert not (tmp_path / "h/qproxy/cgroup.procs").exists()


def test_kernel_hierarchies_from_proc_self_cgroup() -> None:
    text = ("9:name=systemd:/\n6:freezer:/\n4:memory:/process_api/ab\n"
            "2:cpu,cpuacct:/\n0::/\n")
    assert cgroups.kernel_hierarchies(text) == {
        ("freezer",): "/", ("memory",): "/process_api/ab", ("cpu", "cpuacct"): "/",
        ("cgroup2",): "/"}


def test_cluster_cgroup_conf_and_slurm_conf() -> None:
    s = Settings.from_argv([], {"QPROXY_CLUSTER_DIR": "/x/st"})
    conf = configs.cgroup_conf(s, (24, 11), cgroups=True)
    assert "CgroupPlugin=cgroup/v1\nCgroupMountpoint=/x/st/cgroup\n" in conf
    assert configs.cgroup_conf(s, (24, 11), cgroups=False) == "CgroupPlugin=disabled\n"
    assert configs.cgroup_conf(s, (22, 5), cgroups=False) == "CgroupPlugin=cgroup/v1\n"
    on = configs.slurm_conf(s, "h", cgroups=True)
    assert "ProctrackType=proctrack/cgroup" in on and "TaskPlugin=task/cgroup" in on
    assert "SelectTypeParameters=CR_CPU_Memory\nDefMemPerCPU=" in on and " RealMemory=" in on
    off = configs.slurm_conf(s, "h")
    assert "proctrack/linuxproc" in off and "RealMemory" not in off
