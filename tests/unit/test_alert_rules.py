"""The alert rules, checked the way Prometheus users check theirs: ``promtool check rules`` on
``deploy/prometheus/gpuledger-alerts.yml`` and ``promtool test rules`` on its test file, whose
series must fire an alert (a consumer refusing 4.8 % of its events, last month not sealed by
day 3, a failed close, a scheduler that stopped answering) or must not (0.5 % refused, the
month sealed, the days before day 3). The verdict asserted is promtool's own.

promtool comes with Debian's ``prometheus`` package; ``.ci/run`` installs it, so under
``GPULEDGER_CI=1`` a missing promtool fails this test instead of skipping it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        message = "promtool is not installed (apt-get install prometheus)"
        if os.environ.get("GPULEDGER_CI"):
            pytest.fail(message + "; CI installs it in .ci/run, so its absence fails the run", pytrace=False)
        pytest.skip(message)
    return found


def run(promtool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *args], cwd=RULES, capture_output=True, text=True, timeout=120)


def test_promtool_accepts_the_rules(promtool: str) -> None:
    checked = run(promtool, "check", "rules", "gpuledger-alerts.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 19 rules found" in checked.stdout


def test_the_rules_fire_on_the_series_that_must_and_only_those(promtool: str) -> None:
    tested = run(promtool, "test", "rules", "gpuledger-alerts.test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout
