"""Faults on the real broker: a consumer killed at the worst moment, the broker going away
mid-stream, and the broker down while the collector publishes. Nothing lost, nothing doubled."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from kafka_fleet import (
    REGISTRY,
    REPO,
    Broker,
    kafka_bus,
    known_fleet,
    raw_event_ids,
    stored,
    stream_consumer,
    truth,
)

from collectors.spool import SpoolingPublisher
from gpuledger.settings import KafkaSettings
from streams.kafka import KafkaBus

pytestmark = pytest.mark.integration

HERE = Path(__file__).resolve().parent


def wait_until(condition: Callable[[], bool], timeout_s: float = 120.0) -> bool:
    """Poll ``condition`` (bounded): for waiting on other processes and threads, not timing."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.25)
    return condition()


def test_a_consumer_killed_between_write_and_commit_does_not_double_count(
    kafka_bootstrap: str, kafka_topic: str, kafka_group: str, tmp_path: Path
) -> None:
    # given a known fleet on the broker
    fleet = known_fleet(nodes_per_entity=1, hours=3)
    bus = kafka_bus(kafka_bootstrap, partitions=4)
    publisher = SpoolingPublisher(bus.producer(kafka_topic), tmp_path / "spool", max_bytes=1 << 26)
    for node, events in fleet.batches:
        publisher.publish(node, list(events))
    publisher.close()
    data_dir = tmp_path / "data"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(HERE)])}
    # when a consumer process writes its first batch and is SIGKILLed before committing it
    killed = subprocess.run(
        [sys.executable, str(HERE / "kafka_killed_consumer.py"), kafka_bootstrap, str(data_dir),
         kafka_topic, kafka_group, "40"],  # messages per batch: a node interval each
        env=env, cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    written_before_kill = len(raw_event_ids(data_dir))
    assert 0 < written_before_kill < len(fleet.events)
    # and `gpuledger consume --bus kafka` is started again in its group
    restarted = subprocess.run(
        [sys.executable, "-m", "gpuledger", "consume", "--bus", "kafka", "--until-idle",
         "--data-dir", str(data_dir), "--registry", str(REGISTRY)],
        env={
            **env,
            "GPULEDGER_KAFKA_BOOTSTRAP": kafka_bootstrap,
            "GPULEDGER_KAFKA__USAGE_TOPIC": kafka_topic,
            "GPULEDGER_KAFKA__QUARANTINE_TOPIC": kafka_topic + ".quarantine",
            "GPULEDGER_KAFKA__CONSUMER_GROUP": kafka_group,
        },
        cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
    )
    # then it resumed after the batch storage holds (the offsets stored with its rows: it seeks
    # there when the partitions are assigned, or skips by offset what it re-reads), dropped
    # nothing as a duplicate, and the totals are exact
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr[-3000:]
    said = " ".join(restarted.stdout.split())  # the console wraps long lines
    assert "0 duplicates dropped" in said
    stored_now = int(re.search(r"consume: ([\d,]+) events accepted", said).group(1).replace(",", ""))
    assert stored_now == len({e.event_id for e in fleet.events}) - written_before_kill, said
    assert "resuming at offset" in restarted.stderr or re.search(r"[1-9][\d,]* messages already stored", said), said
    ids = raw_event_ids(data_dir)
    assert len(ids) == len(set(ids)) == len({e.event_id for e in fleet.events})
    assert stored(data_dir) == truth(fleet.events)


def test_the_broker_stopped_and_restarted_mid_stream_loses_nothing(
    kafka_broker: Broker, kafka_bootstrap: str, kafka_topic: str, kafka_group: str,
    tmp_path: Path,
) -> None:
    # given a collector publishing through its spool and a consumer running beside it
    fleet = known_fleet(nodes_per_entity=1, hours=3)
    batches = list(fleet.batches)
    third = len(batches) // 3
    bus = KafkaBus(KafkaSettings(bootstrap=kafka_bootstrap, partitions=4), connect_timeout_s=3.0)
    publisher = SpoolingPublisher(
        bus.producer(kafka_topic), tmp_path / "spool", max_bytes=1 << 26,
        flush_timeout_s=3.0, retry_interval_s=1.0,
    )
    for node, events in batches[:third]:
        publisher.publish(node, list(events))
    publisher.flush()
    data_dir = tmp_path / "data"
    consumer, parts = stream_consumer(bus, data_dir, kafka_topic, kafka_group, max_batch_records=500)
    stop = threading.Event()
    outcome: dict[str, object] = {}

    def consume() -> None:
        try:
            outcome["totals"] = consumer.run(stop=stop)
        except Exception as exc:  # surfaced by the assertion below
            outcome["error"] = exc

    thread = threading.Thread(target=consume)
    thread.start()
    first_third = [e for _, ev in batches[:third] for e in ev]
    try:
        assert wait_until(lambda: stored(data_dir) == truth(first_third))
        # when the broker stops, the collector goes on publishing, and the broker comes back
        kafka_broker.stop()
        for node, events in batches[third : 2 * third]:
            publisher.publish(node, list(events))
        publisher.flush()
        assert publisher.backlog_messages > 0  # nowhere to go: spooled
        kafka_broker.start()
        for node, events in batches[2 * third :]:
            publisher.publish(node, list(events))
        # the collector's next attempts (each interval) find the broker back and drain the spool
        assert wait_until(publisher.drain, timeout_s=120)
        assert publisher.backlog_messages == 0
        # then the consumer, still running, stores everything exactly once
        assert wait_until(lambda: stored(data_dir) == truth(fleet.events), timeout_s=180)
    finally:
        stop.set()
        thread.join(timeout=60)
        parts.close()
        publisher.close()
    assert "error" not in outcome, outcome
    ids = raw_event_ids(data_dir)
    assert len(ids) == len(set(ids)) == len({e.event_id for e in fleet.events})


def test_broker_down_while_the_collector_publishes_spools_and_delivers_after_a_restart(
    kafka_broker: Broker, kafka_bootstrap: str, kafka_topic: str, kafka_group: str,
    tmp_path: Path,
) -> None:
    # given the broker down while a collector publishes the first half of a fleet's intervals
    fleet = known_fleet(nodes_per_entity=1, hours=2)
    batches = list(fleet.batches)
    half = len(batches) // 2
    kafka_broker.stop()
    settings = KafkaSettings(bootstrap=kafka_bootstrap, partitions=4)
    spool_dir = tmp_path / "spool"
    before = SpoolingPublisher(
        KafkaBus(settings, connect_timeout_s=2.0).producer(kafka_topic), spool_dir, max_bytes=1 << 26
    )
    for node, events in batches[:half]:
        before.publish(node, list(events))
    before.flush()
    assert before.backlog_messages == half
    # when the collector restarts (its spool on disk), the broker comes back, and it goes on
    before.close()
    kafka_broker.start()
    after = SpoolingPublisher(
        KafkaBus(settings, connect_timeout_s=10.0).producer(kafka_topic), spool_dir, max_bytes=1 << 26
    )
    assert after.backlog_messages == half
    for node, events in batches[half:]:
        after.publish(node, list(events))
    after.close()
    # then the spool is empty and the consumer stores every event exactly once
    assert after.backlog_messages == 0
    data_dir = tmp_path / "data"
    consumer, parts = stream_consumer(kafka_bus(kafka_bootstrap), data_dir, kafka_topic, kafka_group)
    try:
        totals = consumer.run(until_idle=True, idle_polls=3)
    finally:
        parts.close()
    assert totals.accepted == len({e.event_id for e in fleet.events})
    assert stored(data_dir) == truth(fleet.events)


def _collect(env: dict[str, str], data_dir: Path, seconds: int) -> int:
    """Run `gpuledger collect --bus kafka --simulate` for a while; the events it published."""
    done = subprocess.run(
        [sys.executable, "-m", "gpuledger", "collect", "--bus", "kafka", "--simulate",
         "--duration", str(seconds), "--sample-period", "1", "--interval", "2", "--no-metrics",
         "--node", "it-node", "--data-dir", str(data_dir), "--registry", str(REGISTRY)],
        env=env, cwd=data_dir.parent, capture_output=True, text=True, timeout=180, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    said = " ".join(done.stdout.split())
    match = re.search(r"([\d,]+) events published, 0 pending", said)
    assert match, said
    return int(match.group(1).replace(",", ""))


def test_the_collector_command_spools_through_an_outage_and_delivers_everything_once(
    kafka_broker: Broker, kafka_bootstrap: str, kafka_topic: str, kafka_group: str,
    tmp_path: Path,
) -> None:
    # given `gpuledger collect --bus kafka` on a simulated node while the broker is down
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "GPULEDGER_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "GPULEDGER_KAFKA__USAGE_TOPIC": kafka_topic,
        "GPULEDGER_KAFKA__QUARANTINE_TOPIC": kafka_topic + ".quarantine",
        "GPULEDGER_KAFKA__CONSUMER_GROUP": kafka_group,
    }
    collector_dir = tmp_path / "collector"
    collector_dir.mkdir()
    kafka_broker.stop()
    during_outage = _collect(env, collector_dir, seconds=6)
    spooled = list((collector_dir / "spool").glob("seg-*.spool"))
    assert during_outage > 0 and any(p.stat().st_size for p in spooled)
    # when the broker is back and the collector is started again (a restart: same spool)
    kafka_broker.start()
    after = _collect(env, collector_dir, seconds=4)
    # then the consumer stores every event the collector published, once
    data_dir = tmp_path / "data"
    consumed = subprocess.run(
        [sys.executable, "-m", "gpuledger", "consume", "--bus", "kafka", "--until-idle",
         "--data-dir", str(data_dir), "--registry", str(REGISTRY)],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180, check=False,
    )
    assert consumed.returncode == 0, consumed.stdout + consumed.stderr[-3000:]
    ids = raw_event_ids(data_dir)
    assert len(ids) == len(set(ids)) == during_outage + after
    assert all(p.stat().st_size == 0 for p in (collector_dir / "spool").glob("seg-*.spool"))
