"""A partition revoked in the middle of a batch's polls (issue 18), staged on a real broker.

Member A of a two-partition topic holds records of both partitions, polled but unwritten,
when member B joins: the group rebalances inside A's next poll of the same batch (A stalls
there until B's join needs it, as a slow fetch would). The batch A hands out holds no record
of a partition it no longer owns and no record twice; B resumes that partition from storage's
offsets; at the end every event is stored exactly once and the group's committed offsets are
the log ends. (A member that loses a partition *unseen*, after its batch was handed out, is
refused at its Delta commit: ``tests/unit/test_exactly_once.py`` and the SIGSTOP campaign in
``test_kafka_storage_wins.py``.)
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from kafka import KafkaAdminClient
from kafka import KafkaConsumer as PlainConsumer
from kafka.structs import TopicPartition
from kafka_fleet import kafka_bus, known_fleet, publish, raw_event_ids, stored, stream_consumer, truth

pytestmark = pytest.mark.integration


def test_records_of_a_partition_revoked_between_a_batch_s_polls_are_never_handed_out_or_stored_twice(
    kafka_bootstrap: str, kafka_topic: str, kafka_group: str, tmp_path: Path
) -> None:
    fleet = known_fleet(nodes_per_entity=2, hours=2)
    bus = kafka_bus(kafka_bootstrap, partitions=2)
    bus.ensure_topics([kafka_topic])
    publish(bus, kafka_topic, fleet.batches)

    a, a_parts = stream_consumer(bus, tmp_path, kafka_topic, kafka_group, max_batch_records=20)
    member = a_parts.kafka_consumer
    assert a.run_once() is not None  # A joined alone and holds both partitions
    assert sorted(member.assigned_partitions()) == [0, 1]

    b_done: dict[str, object] = {}

    def run_b() -> None:
        b, b_parts = stream_consumer(bus, tmp_path, kafka_topic, kafka_group, max_batch_records=20)
        try:
            b_done["totals"] = b.run(until_idle=True, idle_polls=6)
        except Exception as exc:  # noqa: BLE001 - reported by the main thread
            b_done["error"] = exc
        finally:
            b_parts.close()

    inner_poll = member._poll
    revoked: list[int] = []
    revoked_now = member._revoked_now

    def record_revoke(partitions: list[int]) -> None:
        revoked.extend(partitions)
        revoked_now(partitions)

    member._revoked_now = record_revoke  # type: ignore[method-assign]
    staged: dict[str, object] = {}

    def poll_that_meets_a_rebalance(timeout_s: float, max_records: int):  # noqa: ANN202
        staged["polls"] = staged.get("polls", 0) + 1
        if "held" in staged or not staged.get("armed") or staged["polls"] < 2:
            return inner_poll(timeout_s, max_records)
        staged["held"] = True  # the batch's second poll: it holds records already; B joins now
        staged["b"] = threading.Thread(target=run_b)
        staged["b"].start()
        # A's fetch stalls (nothing more arrives) until the group rebalances inside it
        member._consumer.pause(*member._consumer.assignment())
        deadline = time.monotonic() + 90
        while not revoked and time.monotonic() < deadline:
            polled = inner_poll(0.5, max_records)
            assert not revoked or all(r.partition in member.assigned_partitions() for r in polled)
            if revoked:
                return polled
            assert polled == [], "a paused member handed out records"
        raise AssertionError("the group never rebalanced while A's batch was being polled")

    member._poll = poll_that_meets_a_rebalance  # type: ignore[method-assign]
    handed_out: list = []
    real_poll_batch = member.poll_batch

    def recording_poll_batch(*args, **kwargs):  # noqa: ANN202
        staged["polls"] = 0
        records = real_poll_batch(*args, **kwargs)
        if staged.get("held") and "batch" not in staged:
            staged["batch"] = records
            staged["owned_after"] = sorted(member.assigned_partitions())
        handed_out.extend(records)
        return records

    member.poll_batch = recording_poll_batch  # type: ignore[method-assign]
    staged["armed"] = True
    try:
        a.run(until_idle=True, idle_polls=6)
    finally:
        a_parts.close()
        if "b" in staged:
            staged["b"].join(timeout=240)
    assert "totals" in b_done, (b_done, sorted(staged))
    assert "batch" in staged, "the rebalance was never staged inside a batch"
    owned = staged["owned_after"]
    assert len(owned) == 1, owned  # the group split the two partitions
    batch = staged["batch"]
    assert all(r.partition in owned for r in batch), (owned, sorted({r.partition for r in batch}))
    positions = [(r.partition, r.offset) for r in batch]
    assert len(positions) == len(set(positions))

    ids = raw_event_ids(tmp_path)
    assert Counter(ids).most_common(1)[0][1] == 1
    assert len(ids) == len({e.event_id for e in fleet.events})
    assert stored(tmp_path) == truth(fleet.events)
    admin = KafkaAdminClient(bootstrap_servers=[kafka_bootstrap], client_id="test-admin")
    try:
        committed = {tp.partition: m.offset for tp, m in admin.list_group_offsets({kafka_group: None})[kafka_group].items()}
    finally:
        admin.close()
    reader = PlainConsumer(bootstrap_servers=[kafka_bootstrap])
    try:
        ends = reader.end_offsets([TopicPartition(kafka_topic, p) for p in (0, 1)])
    finally:
        reader.close()
    assert committed == {tp.partition: end for tp, end in ends.items()}
