"""The shipped alert rules (conf/prometheus/qproxy-alerts.yml) with Debian's promtool:
`check rules` (syntax, PromQL) and `test rules` (qproxy-alerts.test.yml: input series and the
alerts they must raise, or not), and a rule file with one threshold broken fails its unit
test (the tests can fail). That every series the rules read really exists is
test_prometheus.py's part (test_dashboard_and_rules_against_real_data)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.packages.debroot import REPO

pytestmark = pytest.mark.slow
RULES = REPO / "conf" / "prometheus" / "qproxy-alerts.yml"
UNIT = REPO / "conf" / "prometheus" / "qproxy-alerts.test.yml"
ALERTS = {"QproxyDeviceDown", "QproxyLanesSaturated", "QproxyLaneWaitsLong",
          "QproxyServerErrorsRising", "QproxyUpstreamErrorsRising",
          "QproxyUnauthenticatedRequests", "QproxyReapable", "QproxyUsageNotBooked",
          "QproxyMetricsStale"}


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    if not shutil.which("promtool"):
        pytest.fail("promtool missing: apt-get install prometheus (scripts/test's prepare does)")
    return subprocess.run(["promtool", *args], cwd=cwd, capture_output=True, text=True,
                          check=False, timeout=120)


def test_rules_check_and_unit_tests() -> None:
    assert set(re.findall(r"^ +- alert: (\w+)$", RULES.read_text(), re.M)) == ALERTS
    check = promtool("check", "rules", str(RULES), cwd=RULES.parent)
    assert check.returncode == 0 and f"{len(ALERTS)} rules found" in check.stdout, check
    unit = promtool("test", "rules", UNIT.name, cwd=UNIT.parent)
    assert unit.returncode == 0 and "SUCCESS" in unit.stdout, unit.stdout + unit.stderr
    # every alert has a unit test that expects it to fire
    tested = set(re.findall(r"alertname: (\w+)\n\s+exp_alerts:\n\s+- exp_labels",
                            UNIT.read_text()))
    assert tested == ALERTS, ALERTS - tested


def test_a_broken_threshold_fails_the_unit_tests(tmp_path: Path) -> None:
    text = RULES.read_text()
    broken = text.replace("(qproxy_device_up) == 0", "(qproxy_device_up) == 2")
    assert broken != text
    (tmp_path / RULES.name).write_text(broken)
    shutil.copy(UNIT, tmp_path / UNIT.name)
    unit = promtool("test", "rules", UNIT.name, cwd=tmp_path)
    assert unit.returncode != 0 and "QproxyDeviceDown" in unit.stdout + unit.stderr, unit
