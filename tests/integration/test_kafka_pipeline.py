"""The whole pipeline on the real broker: fleet → Kafka → stream consumer → Parquet → close."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path

import pyarrow.dataset as ds
import pytest
from kafka_fleet import (
    PERIOD,
    billable,
    kafka_bus,
    known_fleet,
    publish,
    quarantine_rows,
    raw_event_ids,
    registry,
    stored,
    stream_consumer,
    truth,
)

from accounting.close import close_month
from collectors.publish import encode_batch
from storage.dataset import Store
from storage.rollup import rolled_up

pytestmark = pytest.mark.integration


def billed(data_dir: Path) -> dict[tuple[str, str], int]:
    files = sorted(str(p) for p in (data_dir / "ledgers" / "billing").rglob("*.parquet"))
    table = ds.dataset(files, format="parquet").to_table(
        columns=["entity", "project", "charge_class", "gpu_microseconds"]
    )
    out: Counter[tuple[str, str]] = Counter()
    for row in table.to_pylist():
        assert row["charge_class"] == "usage"
        out[(row["entity"], row["project"])] += row["gpu_microseconds"]
    return dict(out)


def test_a_known_fleet_through_kafka_closes_to_the_exact_truth(
    kafka_bootstrap: str, kafka_topic: str, kafka_group: str, tmp_path: Path
) -> None:
    # given a known fleet's events on the broker, the first 20 messages sent twice
    # (a collector that restarted and re-sent what it was not sure of)
    fleet = known_fleet(nodes_per_entity=2, hours=3)
    bus = kafka_bus(kafka_bootstrap, partitions=4)
    publish(bus, kafka_topic, fleet.batches + fleet.batches[:20])
    expected = truth(fleet.events)
    # when one stream consumer drains the topic and the month is closed
    consumer, parts = stream_consumer(bus, tmp_path, kafka_topic, kafka_group, max_batch_records=2000)
    try:
        totals = consumer.run(until_idle=True, idle_polls=3)
    finally:
        parts.close()
    close_month(rolled_up(Store(tmp_path)), registry(), PERIOD)
    # then every event is stored once, hourly usage equals the truth to the microsecond,
    # and the billing ledger bills exactly the attributed part of it
    distinct = {e.event_id for e in fleet.events}
    assert totals.refused == 0
    assert totals.accepted == len(distinct)
    assert totals.duplicates == sum(len(ev) for _, ev in fleet.batches[:20])
    assert sorted(raw_event_ids(tmp_path)) == sorted(distinct)
    assert stored(tmp_path) == expected
    assert billed(tmp_path) == billable(expected)


def test_two_consumers_in_one_group_split_the_work_and_the_totals_stay_exact(
    kafka_bootstrap: str, kafka_topic: str, kafka_group: str, tmp_path: Path
) -> None:
    # given two consumers of one group, writing to one store, that have split a 4-partition
    # topic between them (joined while it was empty: whoever joins first could otherwise
    # drain this small fleet before the other one is given anything)
    fleet = known_fleet(nodes_per_entity=2, hours=2)
    bus = kafka_bus(kafka_bootstrap, partitions=4)
    bus.ensure_topics([kafka_topic])
    first, first_parts = stream_consumer(bus, tmp_path, kafka_topic, kafka_group, max_batch_records=500)
    second, second_parts = stream_consumer(bus, tmp_path, kafka_topic, kafka_group, max_batch_records=500)
    members = (first_parts.kafka_consumer, second_parts.kafka_consumer)

    def split() -> bool:
        a, b = (m.assigned_partitions() for m in members)
        return bool(a) and bool(b) and sorted(a + b) == [0, 1, 2, 3]

    def join(member) -> None:
        deadline = time.monotonic() + 90
        while not split() and time.monotonic() < deadline:
            assert member.poll_batch(1, 0.2) == []  # the topic is still empty

    joiners = [threading.Thread(target=join, args=(m,)) for m in members]
    for t in joiners:
        t.start()
    for t in joiners:
        t.join(timeout=120)
    assert split(), [m.assigned_partitions() for m in members]
    # when the fleet is published and both run side by side
    publish(bus, kafka_topic, fleet.batches)
    results: dict[str, object] = {}

    def run(name: str, consumer) -> None:
        try:
            results[name] = consumer.run(until_idle=True, idle_polls=6)
        except Exception as exc:  # surfaced by the assertion below
            results[name] = exc

    threads = [threading.Thread(target=run, args=(n, c)) for n, c in (("a", first), ("b", second))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    held = (first_parts.kafka_consumer.assigned_partitions(), second_parts.kafka_consumer.assigned_partitions())
    first_parts.close()
    second_parts.close()
    # then both finished, each held part of the partitions, and the totals are exact
    assert not any(t.is_alive() for t in threads)
    assert all(not isinstance(r, Exception) for r in results.values()), results
    assert sorted(held[0] + held[1]) == [0, 1, 2, 3] and held[0] and held[1]
    assert results["a"].accepted > 0 and results["b"].accepted > 0
    assert results["a"].accepted + results["b"].accepted == len({e.event_id for e in fleet.events})
    assert stored(tmp_path) == truth(fleet.events)


def test_poison_messages_go_to_the_quarantine_topic_and_dataset_and_consumption_goes_on(
    kafka_bootstrap: str, kafka_topic: str, kafka_group: str, tmp_path: Path
) -> None:
    # given good intervals with, between them, a message that is not JSON and one whose
    # second line has the wrong schema (gpu_seconds is a string)
    fleet = known_fleet(nodes_per_entity=1, hours=1)
    good = list(fleet.batches)
    wrong = good[0][1][0].to_dict() | {"gpu_seconds": "sixty"}
    bus = kafka_bus(kafka_bootstrap, partitions=2)
    quarantine_topic = kafka_topic + ".quarantine"
    producer = bus.producer(kafka_topic)
    for node, events in good[:5]:
        producer.send(node, encode_batch(list(events)))
    producer.send("bad-node", b"\x00\x01 this is not json")
    producer.send("bad-node", encode_batch([good[5][1][0]]) + b"\n" + json.dumps(wrong).encode())
    for node, events in good[5:]:
        producer.send(node, encode_batch(list(events)))
    producer.close()
    # when the stream consumer drains the topic
    consumer, parts = stream_consumer(
        bus, tmp_path, kafka_topic, kafka_group, quarantine_topic=quarantine_topic
    )
    try:
        totals = consumer.run(until_idle=True, idle_polls=3)
    finally:
        parts.close()
    # then both bad lines are refused with a reason, in the dataset and on the quarantine topic
    assert totals.refused == 2
    rows = quarantine_rows(tmp_path)
    assert len(rows) == 2
    assert all(r["reason_code"] and r["reason"] for r in rows)
    assert {r["source"].split("@")[0].rsplit("/", 1)[0] for r in rows} == {kafka_topic}
    assert any("not json" in r["raw"] for r in rows)
    assert any('"sixty"' in r["raw"] for r in rows)
    reader = bus.consumer(quarantine_topic, kafka_group + "-reader")
    try:
        envelopes = []
        for _ in range(40):
            envelopes += [json.loads(r.value) for r in reader.poll_batch(100, 0.5)]
            if len(envelopes) >= 2:
                break
    finally:
        reader.close()
    assert sorted(e["reason_code"] for e in envelopes) == sorted(r["reason_code"] for r in rows)
    assert all(e["reason"] and e["raw"] for e in envelopes)
    # and every good event (the good line of the mixed message included) is stored exactly
    assert stored(tmp_path) == truth(fleet.events)
