"""A third-party producer: events written by hand from docs/producers.md, published with kcat.

Nothing of gpuledger builds the events: the event_id is computed here with the formula the
page documents, every event is checked against streams/event.schema.json, and kcat (not
kafka-python) publishes them into the real broker. The gpuledger consumer must accept them.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jsonschema
import pytest

import streams.schema
from kafka_fleet import kafka_bus, quarantine_rows, raw_event_ids

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def documented_event_id(node: str, device_uuid: str, interval_start: str) -> str:
    """docs/producers.md: first 32 hex characters of SHA-256 over node, device_uuid, interval_start joined by U+001F."""
    return hashlib.sha256("\x1f".join((node, device_uuid, interval_start)).encode("utf-8")).hexdigest()[:32]


def third_party_events(node: str, minutes: int) -> list[dict]:
    start = datetime(2026, 10, 5, 3, 0, tzinfo=UTC)
    events = []
    for gpu in range(3):
        uuid = f"GPU-7a3c0000-0000-4000-8000-00000000000{gpu}"
        for minute in range(minutes):
            begin = (start + timedelta(minutes=minute)).strftime("%Y-%m-%dT%H:%M:%SZ")
            end = (start + timedelta(minutes=minute + 1)).strftime("%Y-%m-%dT%H:%M:%SZ")
            events.append({
                "schema_version": 1,
                "event_id": documented_event_id(node, uuid, begin),
                "site": "partner-dc", "node": node, "gpu_uuid": uuid, "device_uuid": uuid,
                "gpu_model": "NVIDIA H100 80GB HBM3", "mig_profile": None, "gpu_fraction": 1.0,
                "entity": "naver", "project": "naver-hyperclova", "job_id": f"slurm:{4000 + gpu}",
                "interval_start": begin, "interval_end": end,
                "gpu_seconds": 60.0, "busy_gpu_seconds": 45.5, "energy_joules": 42000.0,
                "samples": 6, "expected_samples": 6, "flags": [],
            })
    return events


def test_events_published_with_kcat_are_accepted_by_the_consumer(
    kcat: str, kafka_bootstrap: str, kafka_topic: str, kafka_group: str, tmp_path: Path
) -> None:
    schema = json.loads(Path(streams.schema.__file__).with_name("event.schema.json").read_text(encoding="utf-8"))
    node = "partner-node-01"
    good = third_party_events(node, minutes=10)
    for event in good:
        jsonschema.validate(event, schema)
    forged = dict(good[0], interval_start="2026-10-05T04:00:00Z", interval_end="2026-10-05T04:01:00Z")
    jsonschema.validate(forged, schema)  # well-formed, but its event_id is not the hash of its fields
    # given the topics exist (as kafka-topics.sh would make them) and the lines "key|json" of docs/producers.md
    quarantine_topic = f"{kafka_topic}.quarantine"
    kafka_bus(kafka_bootstrap).ensure_topics([kafka_topic, quarantine_topic])
    lines = tmp_path / "events.keyed"
    lines.write_text("".join(f"{e['node']}|{json.dumps(e)}\n" for e in [*good, forged]))
    # when kcat publishes them, one message per line, keyed by the node
    sent = subprocess.run(
        [kcat, "-P", "-b", kafka_bootstrap, "-t", kafka_topic, "-K", "|", "-z", "zstd",
         "-X", "acks=all", "-X", "enable.idempotence=true", "-l", str(lines)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert sent.returncode == 0, sent.stderr
    # and the gpuledger consumer drains the topic
    data = tmp_path / "data"
    env = {
        **os.environ, "GPULEDGER_CONFIG": "", "COLUMNS": "200",
        "GPULEDGER_KAFKA_BOOTSTRAP": kafka_bootstrap, "GPULEDGER_KAFKA__USAGE_TOPIC": kafka_topic,
        "GPULEDGER_KAFKA__QUARANTINE_TOPIC": quarantine_topic, "GPULEDGER_KAFKA__CONSUMER_GROUP": kafka_group,
        "GPULEDGER_CONSUMER__IDLE_POLLS": "4",
    }
    consumed = subprocess.run(
        [sys.executable, "-m", "gpuledger", "consume", "--bus", "kafka", "--until-idle", "--data-dir", str(data),
         "--registry", str(Path(__file__).resolve().parents[2] / "examples" / "registry.toml")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert consumed.returncode == 0, consumed.stderr
    # then every well-formed event is stored once, and the forged one is kept in quarantine with its reason
    assert f"{len(good)} events accepted, 1 refused" in consumed.stdout, consumed.stdout
    assert sorted(raw_event_ids(data)) == sorted(e["event_id"] for e in good)
    [refused] = quarantine_rows(data)
    assert refused["reason_code"] == "bad_event_id"
    assert json.loads(refused["raw"])["interval_start"] == "2026-10-05T04:00:00Z"
