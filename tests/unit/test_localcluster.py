"""scripts/localcluster without daemons: the settings built from argv/env, handed back to
scripts/cluster as environment variables, and the slurm.conf renderer's two layouts."""

from __future__ import annotations

from pathlib import Path

from scripts.localcluster import configs
from scripts.localcluster.settings import REPO, Settings


def test_defaults_single_node() -> None:
    s = Settings.from_argv([], {})
    assert (s.suite, s.nodes, s.accounting, s.multi, s.netns) == ("host", 1, False, False, None)
    assert s.state == (REPO / ".state" / "cluster").resolve()
    assert s.slurm_conf == s.state / "slurm" / "slurm.conf"
    assert s.emulator_url == "http://127.0.0.1:8290"
    assert s.daemons == ("munged", "slurmctld", "slurmd", "s3", "emulator")
    assert s.problem() is None


def test_suite_and_several_nodes() -> None:
    s = Settings.from_argv(["up", "--slurm", "trixie"], {})
    assert (s.netns, s.chroot, s.state.name) == ("qproxy-trixie", True, "cluster-trixie")
    m = Settings.from_argv(["up", "--nodes", "3"], {"QPROXY_CLUSTER_NAME": "mn-x"})
    assert m.accounting and m.multi  # accounting on by default for N > 1
    assert (m.ctl_ns, m.node_ns("qnode2"), m.node_addr("qnode2")) == (
        "qproxy-mn-x-ctl", "qproxy-mn-x-qnode2", "127.77.0.12")
    assert m.state.name == "cluster-mn-x" and m.cluster_name == "qproxy_mn_x"
    assert m.emulator_url == "http://127.77.0.1:8290" and m.dbd_port == 16819
    assert m.daemons[-3:] == ("slurmd-qnode1", "slurmd-qnode2", "slurmd-qnode3")
    assert Settings.from_argv(["--nodes", "2", "--slurm", "bookworm"], {}).problem()


def test_options_win_over_env_and_stop_at_double_dash() -> None:
    env = {"QPROXY_CLUSTER_NODES": "3", "QPROXY_CLUSTER_ACCOUNTING": "0"}
    s = Settings.from_argv(["status", "--nodes", "1"], env)
    assert (s.nodes, s.multi) == (1, False)
    # `exec -- sbatch --nodes 2 --accounting`: the command's options are not ours
    s = Settings.from_argv(["exec", "--", "sbatch", "--nodes", "2", "--accounting"], env)
    assert (s.nodes, s.accounting) == (3, False)


def test_env_round_trip(tmp_path: Path) -> None:
    s = Settings.from_argv(["--slurm", "sid", "--nodes", "3", "--name", "t"],
                           {"QPROXY_CLUSTER_DIR": str(tmp_path), "QPROXY_CLUSTER_FEZ_LANES": "4"})
    assert Settings.from_argv([], s.env()) == s


def test_slurm_conf_layouts() -> None:
    single = configs.slurm_conf(Settings.from_argv([], {"QPROXY_CLUSTER_FEZ_LANES": "4"}), "h")
    assert "NodeName=h NodeAddr=127.0.0.1 CPUs=8 Gres=qpu:5 State=UNKNOWN\n" in single
    assert "Licenses=ibm_fez:4,ibm_torino:1,ibm_onprem:2\n" in single
    assert "PartitionName=debug" in single
    multi = configs.slurm_conf(Settings.from_argv(["--nodes", "2"], {}), "h")
    assert "SlurmctldHost=h(127.77.0.1)\n" in multi
    assert "NodeName=qnode1 NodeAddr=127.77.0.11 CPUs=8 Gres=qpu:3 State=UNKNOWN\n" in multi
    assert "NodeName=qnode2 NodeAddr=127.77.0.12 CPUs=8 State=UNKNOWN\n" in multi
    assert "AccountingStorageType=accounting_storage/slurmdbd\n" in multi
    for text in (single, multi):  # every setting once
        keys = [ln.split("=")[0] for ln in text.splitlines()
                if ln and not ln.startswith(("#", "NodeName", "PartitionName"))]
        assert len(keys) == len(set(keys)), keys
