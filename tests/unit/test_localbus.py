"""The embedded local bus: durable log, group offsets, torn tails."""

from __future__ import annotations

import pytest

from streams.localbus import LocalBus

pytestmark = pytest.mark.unit


def test_a_consumer_resumes_at_its_last_commit(tmp_path) -> None:
    bus = LocalBus(tmp_path)
    producer = bus.producer("t")
    for i in range(5):
        producer.send("node", f"m{i}".encode())
    producer.flush()
    consumer = bus.consumer("t", "g")
    first = consumer.poll_batch(3, 0.1)
    assert [r.value for r in first] == [b"m0", b"m1", b"m2"]
    consumer.commit({0: first[-1].offset + 1})
    consumer.poll_batch(10, 0.1)  # read but never committed: a crash
    consumer.close()
    restarted = bus.consumer("t", "g")
    assert [r.value for r in restarted.poll_batch(10, 0.1)] == [b"m3", b"m4"]
    assert [r.offset for r in bus.consumer("t", "other").poll_batch(10, 0.1)] == [0, 1, 2, 3, 4]


def test_a_torn_tail_is_invisible_and_cut_by_the_next_writer(tmp_path) -> None:
    bus = LocalBus(tmp_path)
    producer = bus.producer("t")
    producer.send("n", b"whole")
    producer.flush()
    with open(tmp_path / "t" / "log", "ab") as log:
        log.write(b"GL\x00\x00\x00\x01\x00\x00")  # half a header: a writer died mid-append
    assert [r.value for r in bus.consumer("t", "g").poll_batch(10, 0.1)] == [b"whole"]
    later = bus.producer("t")
    later.send("n", b"after")
    later.flush()
    assert [r.value for r in bus.consumer("t", "g").poll_batch(10, 0.1)] == [b"whole", b"after"]


def test_keys_travel_with_the_records(tmp_path) -> None:
    bus = LocalBus(tmp_path)
    producer = bus.producer("t")
    producer.send("node-7", b"x")
    producer.close()
    [record] = bus.consumer("t", "g").poll_batch(1, 0.1)
    assert (record.topic, record.partition, record.key) == ("t", 0, b"node-7")
