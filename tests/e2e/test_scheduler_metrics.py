"""The scheduler's /metrics, scraped as Prometheus would scrape it.

Given a data directory with October's usage, closed by hand, when `gpuledger schedule
--metrics-port 0` starts (its catch-up closes every due month left), then /metrics says which
month is sealed (``closed_through_month``, read from storage, not from this process's memory),
when this process closed what it closed (nothing stamped for October, which it did not close),
that it held the close lock, and one monthly-close run with no failure.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from spine_events import event  # noqa: E402

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]


def sample(text: str, name: str, labels: str = "") -> float | None:
    match = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, flags=re.MULTILINE)
    return None if match is None else float(match.group(1))


def test_the_scheduler_exports_what_it_closed(tmp_path: Path, cli) -> None:
    data = tmp_path / "data"
    common = ["--data-dir", str(data), "--registry", "examples/registry.toml"]
    (tmp_path / "e.jsonl").write_text("\n".join(json.dumps(event(f"2026-10-05T03:{m:02d}:00Z")) for m in range(10)))
    cli("ingest", str(tmp_path / "e.jsonl"), *common)
    cli("consume", "--until-idle", *common)
    cli("close", "--month", "2026-10", *common)
    before_s = time.time()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gpuledger", "schedule", "--metrics-port", "0", *common],
        cwd=REPO, env={**os.environ, "GPULEDGER_CONFIG": ""}, stderr=subprocess.PIPE, text=True,
    )
    try:
        url, started = None, None
        deadline = time.monotonic() + 300
        while started is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            assert line, f"schedule exited {proc.poll()} before starting"
            if line.startswith("{"):
                record = json.loads(line)
                url = record.get("url", url)
                started = record if record.get("msg") == "scheduler started" else None
        assert url and started, "no 'metrics served' / 'scheduler started' lines"
        with urllib.request.urlopen(url.replace("0.0.0.0", "127.0.0.1"), timeout=10) as response:
            text = response.read().decode()
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        proc.stderr.close()
    newest = max(["2026-10", *started["catch_up_closed"]])
    year, month = (int(x) for x in newest.split("-"))
    assert sample(text, "gpuledger_scheduler_closed_through_month") == year * 12 + month - 1
    assert sample(text, "gpuledger_scheduler_last_close_timestamp_seconds", '{period="2026-10"}') is None
    for period in started["catch_up_closed"]:
        closed_at = sample(text, "gpuledger_scheduler_last_close_timestamp_seconds", f'{{period="{period}"}}')
        assert closed_at is not None and before_s <= closed_at <= time.time(), period
    assert sample(text, "gpuledger_scheduler_lease_held") == 1
    assert sample(text, "gpuledger_scheduler_job_runs_total", '{job_id="monthly-close"}') == 1
    assert sample(text, "gpuledger_scheduler_job_failures_total", '{job_id="monthly-close"}') is None
