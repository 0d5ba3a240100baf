"""`qproxy usage`'s merge and aggregation over usage lines as the epilog writes them: relays
are nodes, not lanes; a line read twice counts once; sacct's figures win where it knows the
job; a requeued job is two runs; the period, the groups, CSV/JSON and the plot's series."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from qproxy.admin import usage, usagereport
from qproxy.records import UsageRecord
from qproxy.slurmcli.sacct import AcctJob, parse_sacct

DAY = 86400.0
T0 = 1_796_000_000.0 // DAY * DAY  # a UTC midnight


def line(job: str, end: float, *, start: float | None, lanes: int = 1, qpu: float = 0.0,
         jobs: int = 0, user: str = "alice", account: str | None = "physics",
         resource: str = "ibm_fez", role: str | None = None, node: str | None = None) -> str:
    return UsageRecord(job_id=job, reason="epilog", resource=resource, lanes=lanes, user=user,
                       time=end, proxy="terminated", upstream_jobs=jobs, quantum_seconds=qpu,
                       role=role, started=start, account=account, node=node).to_json()


def write(path: Path, *lines: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(ln + "\n" for ln in lines))
    return path


def multinode_files(tmp_path: Path) -> list[Path]:
    """Job 10 on 3 nodes (2 lanes, 100 s), job 11 single-node on node 2 (1 lane, 50 s)."""
    return [
        write(tmp_path / "qnode1" / "usage.jsonl",
              line("10", T0 + 100, start=T0, lanes=2, qpu=30.0, jobs=3, role="primary")),
        write(tmp_path / "qnode2" / "usage.jsonl",
              line("10", T0 + 100.2, start=T0 + 0.1, lanes=2, role="relay", node="qnode2"),
              line("11", T0 + 200, start=T0 + 150, qpu=5.0, jobs=1, user="bob",
                   account="chemistry")),
        write(tmp_path / "qnode3" / "usage.jsonl",
              line("10", T0 + 100.3, start=T0 + 0.1, lanes=2, role="relay", node="qnode3")),
    ]


def test_relays_count_as_nodes_not_lanes(tmp_path: Path) -> None:
    loaded = usagereport.load(multinode_files(tmp_path))
    runs = usagereport.runs(loaded.records)
    by_id = {r.job_id: r for r in runs}
    assert set(by_id) == {"10", "11"}
    assert by_id["10"].nodes == 3 and by_id["10"].lanes == 2
    assert by_id["10"].lane_seconds == pytest.approx(200.0)  # 2 lanes x 100 s, not x3
    assert by_id["10"].qpu_seconds == 30.0 and by_id["10"].upstream_jobs == 3
    _, total = usagereport.aggregate(runs, ("user",))
    assert total.jobs == 2 and total.upstream_jobs == 4
    assert total.qpu_seconds == pytest.approx(35.0)
    assert total.lane_seconds == pytest.approx(250.0)
    assert total.idle_share == pytest.approx(1 - 35 / 250)


def test_a_directory_stands_for_its_files_and_duplicates_count_once(tmp_path: Path) -> None:
    files = multinode_files(tmp_path)
    copy = write(tmp_path / "shared" / "usage.jsonl", *files[0].read_text().splitlines())
    loaded = usagereport.load([tmp_path, files[0], copy])
    assert len(loaded.files) == 4  # three nodes and the copy, each once
    assert loaded.duplicates == 1
    assert len(usagereport.runs(loaded.records)) == 2


def test_sacct_wins_for_user_account_and_elapsed(tmp_path: Path) -> None:
    loaded = usagereport.load(multinode_files(tmp_path))
    acct = {"11": AcctJob("11", "bob", "physics", "COMPLETED", T0 + 140, T0 + 201, 61.0, 1)}
    run = {r.job_id: r for r in usagereport.runs(loaded.records, acct)}["11"]
    assert run.account == "physics" and run.elapsed_from == "sacct"
    assert run.lane_seconds == pytest.approx(61.0)


def test_requeued_job_is_two_runs_and_old_lines_have_no_lane_time(tmp_path: Path) -> None:
    f = write(tmp_path / "usage.jsonl",
              line("7", T0 + 60, start=T0, qpu=2.0),
              line("7", T0 + 400, start=T0 + 300, qpu=3.0),
              line("8", T0 + 500, start=None, qpu=1.0))
    runs = usagereport.runs(usagereport.load([f]).records,
                            {"7": AcctJob("7", "alice", "x", "COMPLETED", 0, T0 + 400, 9, 1)})
    sevens = [r for r in runs if r.job_id == "7"]
    assert [r.lane_seconds for r in sevens] == [60.0, 100.0]  # sacct knows the last run only
    eight = next(r for r in runs if r.job_id == "8")
    assert eight.lane_seconds == 0.0 and eight.elapsed_from == "unknown"
    rows, _ = usagereport.aggregate(runs, ("user",))
    assert rows[0].jobs == 3 and rows[0].qpu_seconds == pytest.approx(6.0)


def test_groups_days_and_period(tmp_path: Path) -> None:
    f = write(tmp_path / "usage.jsonl",
              line("1", T0 + 10, start=T0, qpu=4.0, account="a"),
              line("2", T0 + DAY + 10, start=T0 + DAY, qpu=6.0, account="b", resource="ibm_x"),
              line("3", T0 + DAY + 20, start=T0 + DAY, qpu=1.0, account="a", user="bob"))
    runs = usagereport.runs(usagereport.load([f]).records)
    rows, _ = usagereport.aggregate(runs, ("account", "day"))
    day0 = usagereport.JobRun.day(runs[0])
    assert [(r.key, r.qpu_seconds) for r in rows][0] == (("a", day0), 4.0)
    assert len(rows) == 3
    inside = [r for r in runs if usagereport.in_period(r, T0 + DAY, T0 + 2 * DAY)]
    assert [r.job_id for r in inside] == ["2", "3"]
    assert usagereport.parse_time("1970-01-02") == DAY
    with pytest.raises(ValueError, match="not a time"):
        usagereport.parse_time("yesterday-ish")


def test_parse_sacct() -> None:
    text = ("12|alice|physics|COMPLETED|1796000000|1796000061|61|3\n"
            "13|bob|chem|CANCELLED by 0|2026-12-01T12:00:00|Unknown|0|1\nbad line\n")
    got = parse_sacct(text)
    assert got["12"] == AcctJob("12", "alice", "physics", "COMPLETED", 1796000000.0,
                                1796000061.0, 61.0, 3)
    assert got["13"].state == "CANCELLED" and got["13"].end == 0.0


def test_cli_csv_json_and_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    multinode_files(tmp_path)
    assert usage.main([str(tmp_path), "--no-sacct", "--csv", "--by", "account"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(r["account"], r["jobs"], float(r["qpu_seconds"])) for r in rows] == [
        ("chemistry", "1", 5.0), ("physics", "1", 30.0)]
    assert usage.main([str(tmp_path), "--no-sacct", "--json", "--by", "resource,day"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["total"]["qpu_seconds"] == 35.0 and doc["sacct"] == "off"
    assert doc["rows"][0]["resource"] == "ibm_fez" and len(doc["runs"]) == 2
    assert usage.main([str(tmp_path), "--no-sacct"]) == 0
    table = capsys.readouterr().out
    assert "TOTAL" in table and "alice" in table and "3 file(s)" in table
    assert usage.main([str(tmp_path), "--by", "colour"]) == 2
    assert "--by takes" in capsys.readouterr().err
    assert usage.main([str(tmp_path / "missing.jsonl")]) == 2
    assert "missing.jsonl" in capsys.readouterr().err
    assert usage.main([str(tmp_path), "--since", "soon"]) == 2


def test_plot_draws_the_series(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from qproxy.admin import usageplot

    runs = usagereport.runs(usagereport.load(multinode_files(tmp_path)).records)
    fig, s = usageplot.draw(runs, "day")
    assert s.qpu_seconds == {"chemistry": [5.0], "physics": [30.0]}
    assert s.utilisation == [pytest.approx(35 / 250)]
    top, bottom = fig.axes
    assert sorted(p.get_height() for p in top.patches) == [5.0, 30.0]
    assert [p.get_height() for p in bottom.patches] == [pytest.approx(100 * 35 / 250)]
    out = tmp_path / "u.png"
    usageplot.plot(runs, out, "day")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
