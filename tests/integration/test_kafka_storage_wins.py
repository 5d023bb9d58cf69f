"""Storage's offsets are the truth on Kafka too (issue 18): a lost newest raw commit is read
again, a re-created topic stops the consumer until a deliberate re-base, the group's committed
offsets follow storage after a rebalance (no phantom lag), and a member frozen mid-batch past
the session timeout cannot store a second copy of what the member that took over stored."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kafka import KafkaAdminClient
from kafka.structs import TopicPartition
from kafka_fleet import REGISTRY, REPO, kafka_bus, known_fleet, publish, raw_event_ids, stored, stream_consumer, truth

from storage.dataset import Store
from streams.checkpoint import rebase
from streams.errors import StoredOffsetBeyondLog

pytestmark = pytest.mark.integration


def test_a_lost_newest_raw_commit_is_read_again_not_skipped_by_the_group_offset(
    kafka_bootstrap: str, kafka_topic: str, kafka_group: str, tmp_path: Path
) -> None:
    fleet = known_fleet(nodes_per_entity=1, hours=2)
    bus = kafka_bus(kafka_bootstrap, partitions=4)
    bus.ensure_topics([kafka_topic])
    publish(bus, kafka_topic, fleet.batches)
    first, parts = stream_consumer(bus, tmp_path, kafka_topic, kafka_group, max_batch_records=40)
    first.run(until_idle=True, idle_polls=4)
    parts.close()
    # when raw's newest commit is lost after Kafka's offsets were committed
    newest = sorted((tmp_path / "raw" / "_delta_log").glob("*.json"))[-1]
    newest.unlink()
    assert 0 < len(raw_event_ids(tmp_path)) < len({e.event_id for e in fleet.events})
    # then a restarted member re-reads from storage's offsets and stores what was lost, once
    again, parts = stream_consumer(bus, tmp_path, kafka_topic, kafka_group, max_batch_records=40)
    again.run(until_idle=True, idle_polls=4)
    parts.close()
    ids = raw_event_ids(tmp_path)
    assert len(ids) == len(set(ids)) == len({e.event_id for e in fleet.events})
    assert stored(tmp_path) == truth(fleet.events)


def _admin(bootstrap: str) -> KafkaAdminClient:
    return KafkaAdminClient(bootstrap_servers=[bootstrap], client_id="test-admin")


def test_a_re_created_topic_stops_the_partition_until_a_deliberate_rebase(
    kafka_bootstrap: str, kafka_topic: str, kafka_group: str, tmp_path: Path
) -> None:
    fleet = known_fleet(nodes_per_entity=1, hours=1)
    bus = kafka_bus(kafka_bootstrap, partitions=1)
    bus.ensure_topics([kafka_topic])
    publish(bus, kafka_topic, fleet.batches)
    first, parts = stream_consumer(bus, tmp_path, kafka_topic, kafka_group)
    first.run(until_idle=True, idle_polls=4)
    parts.close()
    before = len(raw_event_ids(tmp_path))
    stream = f"{kafka_group}/{kafka_topic}/0"
    stored_offset = Store(tmp_path).txn_version("raw", stream)
    assert stored_offset is not None and stored_offset > 5
    # when the topic is deleted and re-created, and a few new messages arrive (offsets from 0)
    admin = _admin(kafka_bootstrap)
    try:
        admin.delete_topics([kafka_topic])
        deadline = time.monotonic() + 60
        while kafka_topic in admin.list_topics() and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        admin.close()
    later = known_fleet(nodes_per_entity=1, hours=2).batches[len(fleet.batches):][:3]
    fresh_bus = kafka_bus(kafka_bootstrap, partitions=1)
    for attempt in range(20):  # the broker may still be finishing the deletion
        try:
            fresh_bus.ensure_topics([kafka_topic])
            break
        except Exception:  # noqa: BLE001
            time.sleep(1)
    publish(fresh_bus, kafka_topic, later)
    # then the consumer stops with one line naming the partition, both offsets and the command
    member, parts = stream_consumer(fresh_bus, tmp_path, kafka_topic, kafka_group)
    with pytest.raises(StoredOffsetBeyondLog) as stopped:
        member.run(until_idle=True, idle_polls=4)
    parts.close()
    text = str(stopped.value)
    assert f"partition 0 of {kafka_topic}: storage holds it up to offset {stored_offset}, but the kafka bus's log ends at offset 3" in text
    assert f"gpuledger offsets rebase --topic {kafka_topic} --partition 0" in text
    assert len(raw_event_ids(tmp_path)) == before  # nothing dropped as "replayed", nothing stored
    # and after the operator's re-base the new messages are stored
    rebase(Store(tmp_path), stream, 0, operator="test", reason="topic re-created")
    member, parts = stream_consumer(fresh_bus, tmp_path, kafka_topic, kafka_group)
    member.run(until_idle=True, idle_polls=4)
    parts.close()
    ids = raw_event_ids(tmp_path)
    assert len(ids) == len(set(ids)) == before + sum(len(events) for _, events in later)


def test_after_a_rebalance_the_group_s_committed_offsets_are_storage_s_no_phantom_lag(
    kafka_bootstrap: str, kafka_topic: str, kafka_group: str, tmp_path: Path
) -> None:
    """A member stored the whole topic but its Kafka commits were refused (a rebalance); the
    member handed the partitions stores nothing new, yet commits storage's offsets to the group,
    so Kafka's own lag (committed vs. log end, read with the admin client) is zero."""
    fleet = known_fleet(nodes_per_entity=1, hours=1)
    bus = kafka_bus(kafka_bootstrap, partitions=4)
    bus.ensure_topics([kafka_topic])
    publish(bus, kafka_topic, fleet.batches)
    first, first_parts = stream_consumer(bus, tmp_path, kafka_topic, kafka_group, max_batch_records=50)
    first_parts.kafka_consumer.commit = lambda next_offsets: False  # every commit refused
    first.run(until_idle=True, idle_polls=4)
    first_parts.close()
    second, second_parts = stream_consumer(bus, tmp_path, kafka_topic, kafka_group, max_batch_records=50)
    again = second.run(until_idle=True, idle_polls=4)
    assert (again.accepted, again.replayed) == (0, 0)
    admin = _admin(kafka_bootstrap)
    try:
        committed = admin.list_consumer_group_offsets(kafka_group)
    finally:
        admin.close()
        ends = second_parts.kafka_consumer._consumer.end_offsets([TopicPartition(kafka_topic, p) for p in range(4)])
        second_parts.close()
    lag = {tp.partition: ends[tp] - committed[tp].offset for tp in ends if tp in committed}
    assert sorted(lag) == [0, 1, 2, 3] and set(lag.values()) == {0}, (committed, ends)


# -- a member frozen mid-batch (SIGSTOP) past the session timeout, many times --------------

SESSION_TIMEOUT_MS = 6_000  # the broker's group.min.session.timeout.ms


def _member(data_dir: Path, bootstrap: str, topic: str, group: str, log_path: Path) -> subprocess.Popen:
    env = {
        **os.environ, "PYTHONPATH": str(REPO), "GPULEDGER_CONFIG": "",
        "GPULEDGER_KAFKA_BOOTSTRAP": bootstrap,
        "GPULEDGER_KAFKA__USAGE_TOPIC": topic,
        "GPULEDGER_KAFKA__QUARANTINE_TOPIC": topic + ".quarantine",
        "GPULEDGER_KAFKA__CONSUMER_GROUP": group,
        "GPULEDGER_KAFKA__PARTITIONS": "4",
        "GPULEDGER_KAFKA__SESSION_TIMEOUT_MS": str(SESSION_TIMEOUT_MS),
        "GPULEDGER_CONSUMER__MAX_BATCH_RECORDS": "25",
    }
    with open(log_path, "a") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "gpuledger", "consume", "--bus", "kafka", "--data-dir", str(data_dir),
             "--registry", str(REGISTRY)],
            env=env, cwd=log_path.parent, stdout=log, stderr=subprocess.STDOUT,
        )


def test_a_member_frozen_mid_batch_past_the_session_timeout_stores_nothing_twice(
    kafka_bootstrap: str, kafka_topic: str, kafka_group: str, tmp_path: Path
) -> None:
    # given a fleet whose stream also carries late events (hour 0 re-appearing hours later,
    # outside the dedupe window: their lookups read raw's log in the middle of a batch)
    fleet = known_fleet(nodes_per_entity=2, hours=6)
    first_hour = min(e.interval_start for e in fleet.events)[:13]  # "YYYY-MM-DDTHH"
    late = [b for i, b in enumerate(fleet.batches) if b[1][0].interval_start.startswith(first_hour) and i % 3 == 0]
    on_time = [b for b in fleet.batches if b not in late]
    bus = kafka_bus(kafka_bootstrap, partitions=4)
    bus.ensure_topics([kafka_topic])
    data = tmp_path / "shared"
    members = [
        _member(data, kafka_bootstrap, kafka_topic, kafka_group, (tmp_path / f"m{i}").with_suffix(".log"))
        for i in range(2)
    ]
    cycles = 6
    chunk = -(-len(on_time) // cycles)
    late_chunk = -(-len(late) // (cycles - 1))
    try:
        time.sleep(4)  # both join
        for cycle in range(cycles):
            frozen = members[cycle % 2]
            batch = on_time[cycle * chunk:(cycle + 1) * chunk]
            if cycle:
                batch = batch + late[(cycle - 1) * late_chunk:cycle * late_chunk]
            publish(bus, kafka_topic, batch)
            time.sleep(0.7)  # both members are mid-backlog
            # when one member freezes mid-batch past the session timeout, the other takes over
            # its partitions and stores past it, and then the frozen one is thawed
            frozen.send_signal(signal.SIGSTOP)
            time.sleep(SESSION_TIMEOUT_MS / 1000 + 3)
            frozen.send_signal(signal.SIGCONT)
            time.sleep(2)
        for proc in members:
            assert proc.poll() is None, "a member exited early"
    finally:
        for proc in members:
            proc.send_signal(signal.SIGCONT)
            proc.terminate()
        for proc in members:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
    # and one member drains what is left
    drain = subprocess.run(
        [sys.executable, "-m", "gpuledger", "consume", "--bus", "kafka", "--until-idle", "--data-dir", str(data),
         "--registry", str(REGISTRY)],
        env={**os.environ, "PYTHONPATH": str(REPO), "GPULEDGER_CONFIG": "", "GPULEDGER_KAFKA_BOOTSTRAP": kafka_bootstrap,
             "GPULEDGER_KAFKA__USAGE_TOPIC": kafka_topic, "GPULEDGER_KAFKA__QUARANTINE_TOPIC": kafka_topic + ".quarantine",
             "GPULEDGER_KAFKA__CONSUMER_GROUP": kafka_group},
        cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
    )
    assert drain.returncode == 0, drain.stderr[-3000:]
    # then raw holds every distinct event exactly once, and the totals are exact
    logs = "".join(p.read_text() for p in tmp_path.glob("m*.log"))
    conflicts = logs.count("commit conflict")
    print(f"commit conflicts seen by thawed members: {conflicts}")
    ids = raw_event_ids(data)
    assert len(ids) == len(set(ids)) == len({e.event_id for e in fleet.events}), f"{len(ids) - len(set(ids))} doubles"
    assert stored(data) == truth(fleet.events)
