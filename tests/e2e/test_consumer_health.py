"""The consumer's metrics endpoint and `gpuledger health`, run as an operator would.

Given events on the local bus, when a long-running `gpuledger consume --metrics-port 0` works
them off, then /metrics counts them and `gpuledger health` passes; when its heartbeat is
old (a consumer that stopped), `gpuledger health` fails with the reason.
"""

from __future__ import annotations

import json
import os
import re
import signal
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


def metric(text: str, name: str, labels: str = "") -> float | None:
    match = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, flags=re.MULTILINE)
    return None if match is None else float(match.group(1))


def test_a_running_consumer_serves_metrics_and_passes_health_then_a_stale_one_fails(tmp_path: Path, cli) -> None:
    events = [event(f"2026-10-05T03:{m:02d}:00Z") for m in range(20)]
    events.append(event("2026-10-05T04:00:00Z", entity="nobody"))  # refused: unknown entity
    path = tmp_path / "e.jsonl"
    path.write_text("\n".join(json.dumps(e) for e in events))
    data = tmp_path / "data"
    common = ["--data-dir", str(data), "--registry", "examples/registry.toml"]

    # before any consumer ran here, health says so
    missing = cli("health", "--data-dir", str(data), check=False)
    assert missing.returncode == 1 and "no heartbeat at" in missing.stderr

    cli("ingest", str(path), *common)
    env = {**os.environ, "COLUMNS": "200", "GPULEDGER_CONFIG": ""}
    consumer = subprocess.Popen(
        [sys.executable, "-m", "gpuledger", "consume", "--metrics-port", "0", *common],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        seen = []
        port = None
        for _ in range(20):  # it says where the metrics are among its first lines (bounded)
            line = consumer.stderr.readline()
            seen.append(line)
            port = re.search(r"metrics on http://0\.0\.0\.0:(\d+)/metrics", line)
            if port is not None or not line:
                break
        assert port is not None, "".join(seen)
        url = f"http://127.0.0.1:{port.group(1)}/metrics"
        beat_file = data / "consumer.heartbeat.json"
        deadline = time.monotonic() + 120  # a bound on waiting, not an assertion on speed
        text, beat = "", {}
        while time.monotonic() < deadline:
            text = urllib.request.urlopen(url, timeout=10).read().decode()
            beat = json.loads(beat_file.read_text()) if beat_file.exists() else {}
            done = metric(text, "gpuledger_consumer_events_total", '{outcome="refused"}') == 1.0
            if done and beat.get("last_commit_s") is not None:  # the heartbeat has caught up too
                break
            time.sleep(0.2)
        assert beat["lag"] == {"0": 0} and beat["lag_unit"] == "bytes" and beat["batches"] >= 1
        assert metric(text, "gpuledger_consumer_events_total", '{outcome="accepted"}') == 20.0
        assert metric(text, "gpuledger_consumer_events_total", '{outcome="duplicate"}') == 0.0
        assert (metric(text, "gpuledger_consumer_batch_duration_seconds_count") or 0) >= 1
        assert metric(text, "gpuledger_collector_samples_total") is None  # its own registry only

        healthy = cli("health", "--data-dir", str(data), "--max-stale-s", "300")
        assert healthy.stdout.startswith("healthy: ")
    finally:
        consumer.send_signal(signal.SIGTERM)
        out, err = consumer.communicate(timeout=120)
    assert consumer.returncode == 0, err
    assert "20 events accepted, 1 refused" in out

    # a consumer that stopped: its last heartbeat ages (here: moved 10 minutes into the past)
    beat = json.loads(beat_file.read_text())
    for key in ("started_s", "last_poll_s", "last_progress_s", "last_commit_s"):
        beat[key] -= 600
    beat_file.write_text(json.dumps(beat))
    stale = cli("health", "--data-dir", str(data), "--max-stale-s", "300", check=False)
    assert stale.returncode == 1
    assert "unhealthy: no progress for 6" in stale.stderr  # 600 s and a little
    lenient = cli("health", "--data-dir", str(data), "--max-stale-s", "3600")
    assert lenient.returncode == 0
