"""A stored offset beyond one partition's log end stops that partition, not the member (issue 18).

Two partitions on a real broker; partition 1's stored offset is re-based past its log end (as
a topic re-created or a retention reset leaves it). The member stores every event of
partition 0 exactly once, keeps partition 1 paused (nothing of it stored, nothing committed to
the group, nothing counted as "replayed"), names it in one line with both offsets and the
``gpuledger offsets rebase`` command, keeps it stopped across a rebalance between two members,
and stores it once after the deliberate re-base.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from kafka import KafkaAdminClient
from kafka import KafkaConsumer as PlainConsumer
from kafka.structs import TopicPartition
from kafka_fleet import kafka_bus, known_fleet, publish, raw_event_ids, stored, stream_consumer, truth
from prometheus_client import CollectorRegistry

from gpuledger.health import assess
from storage.dataset import Store
from streams.checkpoint import rebase
from streams.errors import StoredOffsetBeyondLog
from streams.metrics import ConsumerMetrics

pytestmark = pytest.mark.integration


def _ids_by_partition(bootstrap: str, topic: str) -> tuple[dict[int, list[str]], dict[int, int]]:
    """Every event id on each partition, read back by a plain kafka-python consumer; log ends."""
    reader = PlainConsumer(bootstrap_servers=[bootstrap], enable_auto_commit=False, consumer_timeout_ms=5000)
    try:
        tps = [TopicPartition(topic, p) for p in (0, 1)]
        reader.assign(tps)
        reader.seek_to_beginning(*tps)
        ends = reader.end_offsets(tps)
        ids: dict[int, list[str]] = {0: [], 1: []}
        for message in reader:
            ids[message.partition] += [json.loads(line)["event_id"] for line in message.value.splitlines() if line]
            if all(reader.position(tp) >= ends[tp] for tp in tps):
                break
        return ids, {tp.partition: ends[tp] for tp in tps}
    finally:
        reader.close()


def _committed(bootstrap: str, group: str) -> dict[int, int]:
    admin = KafkaAdminClient(bootstrap_servers=[bootstrap], client_id="test-admin")
    try:
        return {tp.partition: meta.offset for tp, meta in admin.list_group_offsets({group: None})[group].items()}
    finally:
        admin.close()


def _drain(bus, data_dir: Path, topic: str, group: str, outcome: dict[str, object], key: str) -> None:
    member, parts = stream_consumer(bus, data_dir, topic, group, max_batch_records=20)
    try:
        outcome[key] = member.run(until_idle=True, idle_polls=6)
    except StoredOffsetBeyondLog as exc:
        outcome[key] = exc
    finally:
        parts.close()


def test_a_stored_offset_beyond_one_partition_s_log_end_stops_that_partition_and_the_other_flows(
    kafka_bootstrap: str, kafka_topic: str, kafka_group: str, tmp_path: Path
) -> None:
    fleet = known_fleet(nodes_per_entity=2, hours=2)
    first_half = fleet.batches[: len(fleet.batches) // 2]
    bus = kafka_bus(kafka_bootstrap, partitions=2)
    bus.ensure_topics([kafka_topic])
    publish(bus, kafka_topic, first_half)
    on_partition, ends = _ids_by_partition(kafka_bootstrap, kafka_topic)
    assert on_partition[0] and on_partition[1], "the fleet's keys should reach both partitions"
    # partition 1's offsets were reset (a re-created topic): storage holds it past its log end
    stream_1 = f"{kafka_group}/{kafka_topic}/1"
    stored_1 = ends[1] + 500
    rebase(Store(tmp_path), stream_1, stored_1 + 1, operator="test", reason="staged: partition 1 offsets reset")

    member, parts = stream_consumer(bus, tmp_path, kafka_topic, kafka_group, max_batch_records=20)
    try:
        with pytest.raises(StoredOffsetBeyondLog) as stopped:
            member.run(until_idle=True, idle_polls=6)
        assert sorted(parts.kafka_consumer.stopped_partitions()) == [1]
        # the consumer's metrics and its health say so (the member as `consume` wires them)
        registry = CollectorRegistry()
        progress = ConsumerMetrics(registry, lag=parts.kafka_consumer).report()
        assert sorted(progress.stopped or {}) == [1]
        assert registry.get_sample_value("gpuledger_consumer_partition_stopped", {"partition": "1"}) == 1
        assert [p for p in assess(progress, time.time(), 600) if "partition 1 is stopped" in p]
    finally:
        parts.close()
    text = str(stopped.value)
    assert "\n" not in text
    assert (f"partition 1 of {kafka_topic}: storage holds it up to offset {stored_1}, but the kafka bus's log "
            f"ends at offset {ends[1]}") in text
    assert f"gpuledger offsets rebase --topic {kafka_topic} --partition 1" in text
    # partition 0 flowed: every event of it stored exactly once; nothing of partition 1
    ids = raw_event_ids(tmp_path)
    assert Counter(ids) == Counter(set(on_partition[0]))
    committed = _committed(kafka_bootstrap, kafka_group)
    assert committed.get(0) == ends[0] and 1 not in committed, committed  # p1 neither stored nor skipped

    # more messages; two members of the group at once (a rebalance): partition 1 stays stopped
    # with whichever member holds it, partition 0 keeps flowing
    publish(bus, kafka_topic, fleet.batches[len(first_half) :])
    on_partition, ends = _ids_by_partition(kafka_bootstrap, kafka_topic)
    outcome: dict[str, object] = {}
    members = [threading.Thread(target=_drain, args=(bus, tmp_path, kafka_topic, kafka_group, outcome, k))
               for k in ("a", "b")]
    for t in members:
        t.start()
    for t in members:
        t.join(timeout=240)
    assert sorted(outcome) == ["a", "b"], outcome
    refusals = [o for o in outcome.values() if isinstance(o, StoredOffsetBeyondLog)]
    assert refusals and all(f"partition 1 of {kafka_topic}" in str(o) for o in refusals), outcome
    ids = raw_event_ids(tmp_path)
    assert Counter(ids) == Counter(set(on_partition[0]))
    assert 1 not in _committed(kafka_bootstrap, kafka_group)

    # the deliberate re-base: partition 1 is read from 0 and stored once; the month is whole
    rebase(Store(tmp_path), stream_1, 0, operator="test", reason="topic re-created; old records stored")
    member, parts = stream_consumer(bus, tmp_path, kafka_topic, kafka_group, max_batch_records=20)
    try:
        member.run(until_idle=True, idle_polls=6)
    finally:
        parts.close()
    ids = raw_event_ids(tmp_path)
    assert len(ids) == len(set(ids)) == len(set(on_partition[0]) | set(on_partition[1]))
    assert stored(tmp_path) == truth(fleet.events)
    assert _committed(kafka_bootstrap, kafka_group) == ends
