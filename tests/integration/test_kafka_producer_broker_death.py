"""``gpuledger ingest --bus kafka`` whose broker dies mid-send ends with one line, never hangs.

Before the fix it sent on for as long as expired messages freed buffer space, scanning an
ever longer list of failed sends each time, and was still running 500 s after the broker
died. The wait below is a hang guard, not a timing assertion.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kafka_fleet import REPO, Broker

pytestmark = pytest.mark.integration

EVENTS = 200_000  # more than kafka-python's 32 MB buffer holds as one-event messages


def events_file(path: Path) -> Path:
    sys.path.insert(0, str(REPO / "tests" / "unit"))
    from spine_events import event

    with open(path, "w") as out:
        for i in range(EVENTS):
            start = f"2026-11-{2 + i // 86_400:02d}T{(i // 60) % 24:02d}:{i % 60:02d}:00Z"
            out.write(json.dumps(event(start, node=f"n{i % 500}", gpu=f"GPU-{i // 1440}")) + "\n")
    return path


def topic_bytes(kafka_broker: Broker, topic: str) -> int:
    data = Path(kafka_broker.home) / "data"
    return sum(f.stat().st_size for f in data.glob(f"{topic}-*/*.log"))


def test_ingest_ends_with_one_line_when_the_broker_dies_mid_send(
    kafka_broker: Broker, kafka_bootstrap: str, kafka_topic: str, tmp_path: Path
) -> None:
    # given a large ingest, one event per message, under way
    env = {
        **os.environ, "PYTHONPATH": str(REPO), "GPULEDGER_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "GPULEDGER_KAFKA__USAGE_TOPIC": kafka_topic, "GPULEDGER_CONFIG": "",
        "COLUMNS": "400",
    }
    ingest = subprocess.Popen(
        [sys.executable, "-m", "gpuledger", "ingest", str(events_file(tmp_path / "events.jsonl")), "--bus", "kafka",
         "--wire", "json", "--lines-per-message", "1", "--data-dir", str(tmp_path / "data"),
         "--registry", str(REPO / "examples" / "registry.toml")],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while topic_bytes(kafka_broker, kafka_topic) < 1_000_000 and ingest.poll() is None:
            assert time.monotonic() < deadline, "the ingest never started sending"
            time.sleep(0.2)
        assert ingest.poll() is None, "the ingest finished before the broker could be stopped"
        # when the broker dies
        kafka_broker.stop()
        # then the ingest ends with one line naming the setting and what to do
        out, err = ingest.communicate(timeout=400)
    finally:
        if ingest.poll() is None:
            ingest.kill()
            ingest.communicate()
        kafka_broker.start()
    assert ingest.returncode == 1, out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Kafka unavailable" in lines[0] and f"GPULEDGER_KAFKA_BOOTSTRAP={kafka_bootstrap}" in lines[0]
    assert "ingest" in lines[0] and "again" in lines[0]
