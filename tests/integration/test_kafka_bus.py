"""KafkaBus against the real broker: the streams.bus contract, kept by Kafka."""

from __future__ import annotations

import logging
import socket
import threading

import pytest
from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType

from gpuledger.settings import KafkaSettings
from streams.bus import BusRecord
from streams.errors import BusUnavailable
from streams.kafka import KafkaBus

pytestmark = pytest.mark.integration


def _bus(bootstrap: str, **settings) -> KafkaBus:
    return KafkaBus(KafkaSettings(bootstrap=bootstrap, **settings), connect_timeout_s=10.0)


def _drain(consumer, expected: int, max_polls: int = 60) -> list[BusRecord]:
    """Poll until ``expected`` records came (bounded number of polls, never a sleep)."""
    got: list[BusRecord] = []
    for _ in range(max_polls):
        got.extend(consumer.poll_batch(max_records=10_000, timeout_s=0.5))
        if len(got) >= expected:
            break
    return got


def test_topics_are_created_with_the_configured_partitions_and_retention(
    kafka_bootstrap: str, kafka_topic: str
) -> None:
    # given a bus configured for 5 partitions and one day of retention
    bus = _bus(kafka_bootstrap, partitions=5, retention_ms=86_400_000)
    quarantine = kafka_topic + ".quarantine"
    # when it ensures its topics (twice: the second call finds them there)
    bus.ensure_topics([kafka_topic, quarantine])
    bus.ensure_topics([kafka_topic, quarantine])
    # then the broker has them as configured
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        described = {t["name"]: t for t in admin.describe_topics([kafka_topic, quarantine])}
        configs = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, kafka_topic)])
    finally:
        admin.close()
    assert {name: len(t["partitions"]) for name, t in described.items()} == {
        kafka_topic: 5,
        quarantine: 5,
    }
    assert "86400000" in repr(configs)


def test_messages_round_trip_keyed_by_node_and_in_order_per_node(
    kafka_bootstrap: str, kafka_topic: str, kafka_group: str
) -> None:
    # given 3 nodes each sending 50 numbered messages
    bus = _bus(kafka_bootstrap, partitions=4)
    producer = bus.producer(kafka_topic)
    for i in range(50):
        for node in ("node-a", "node-b", "node-c"):
            producer.send(node, f"{node} {i}".encode())
    producer.flush(30.0)
    producer.close()
    # when a consumer reads them
    consumer = bus.consumer(kafka_topic, kafka_group)
    try:
        records = _drain(consumer, 150)
    finally:
        consumer.close()
    # then each node's messages arrived once, in order, in a single partition, keyed by node
    assert len(records) == 150
    for node in ("node-a", "node-b", "node-c"):
        mine = [r for r in records if r.key == node.encode()]
        assert [r.value for r in mine] == [f"{node} {i}".encode() for i in range(50)]
        assert len({r.partition for r in mine}) == 1


def test_position_moves_only_on_commit(
    kafka_bootstrap: str, kafka_topic: str, kafka_group: str
) -> None:
    # given 10 messages on a one-partition topic
    bus = _bus(kafka_bootstrap, partitions=1)
    producer = bus.producer(kafka_topic)
    for i in range(10):
        producer.send("node", str(i).encode())
    producer.close()
    # when a first consumer reads all 10 but commits only the first 4
    first = bus.consumer(kafka_topic, kafka_group)
    records = _drain(first, 10)
    assert [r.offset for r in records] == list(range(10))
    first.commit({0: 4})
    first.close()
    # then the next member of the group resumes at offset 4, not 10
    second = bus.consumer(kafka_topic, kafka_group)
    try:
        again = _drain(second, 6)
    finally:
        second.close()
    assert [r.value for r in again] == [str(i).encode() for i in range(4, 10)]


def test_two_consumers_in_one_group_split_the_partitions_and_revoke_is_reported(
    kafka_bootstrap: str, kafka_topic: str, kafka_group: str
) -> None:
    # given a 4-partition topic and one consumer that holds all partitions
    bus = _bus(kafka_bootstrap, partitions=4)
    revoked: list[list[int]] = []
    one = bus.consumer(kafka_topic, kafka_group, on_revoke=lambda ps: revoked.append(list(ps)))
    one.poll_batch(10, 0.5)
    assert one.assigned_partitions() == [0, 1, 2, 3]
    # when a second member joins while the first keeps polling in its own thread (as two
    # consumer processes would)
    stop = threading.Event()

    def keep_polling() -> None:
        while not stop.is_set():
            one.poll_batch(10, 0.2)

    polling = threading.Thread(target=keep_polling)
    polling.start()
    two = bus.consumer(kafka_topic, kafka_group)
    try:
        for _ in range(100):
            two.poll_batch(10, 0.2)
            if one.assigned_partitions() and two.assigned_partitions():
                break
        held = (one.assigned_partitions(), two.assigned_partitions())
    finally:
        stop.set()
        polling.join(timeout=30)
        two.close()
        one.close()
    # then the partitions are split between them and the first was told of the revocation
    assert sorted(held[0] + held[1]) == [0, 1, 2, 3]
    assert held[0] and held[1]
    assert revoked and revoked[0] == [0, 1, 2, 3]


def test_an_unreachable_broker_is_bus_unavailable_not_a_kafka_error() -> None:
    # given an address where nothing listens
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    bus = KafkaBus(KafkaSettings(bootstrap=f"127.0.0.1:{port}"), connect_timeout_s=1.0)
    # when a producer is made (lazy: no error yet) and used
    producer = bus.producer("gpu.usage.v1")
    # then the send fails with our retryable error
    with pytest.raises(BusUnavailable, match="Kafka unavailable"):
        producer.send("node", b"x")


def test_the_sasl_password_is_never_printed_or_logged(
    kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    # given SCRAM settings against a broker whose listener does not speak SASL
    secret = "hunter2-" + "x" * 12
    settings = KafkaSettings(
        bootstrap=kafka_bootstrap, security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-512", sasl_username="collector", sasl_password=secret,
    )
    bus = KafkaBus(settings, connect_timeout_s=2.0)
    # when a producer tries to connect, with every logger at DEBUG
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(BusUnavailable) as failure:
            bus.producer("gpu.usage.v1").send("node", b"x")
    # then the attempt was logged (kafka-python logs its configuration) without the secret
    assert any("sasl_plain_password" in r.getMessage() for r in caplog.records)
    assert all(secret not in r.getMessage() for r in caplog.records)
    assert secret not in str(failure.value)
    assert secret not in repr(bus) + repr(settings)


def test_a_batch_stops_at_the_byte_bound_and_loses_nothing_at_the_cut(
    kafka_bootstrap: str, kafka_topic: str, kafka_group: str
) -> None:
    # given 40 messages of 100 kB on one partition
    bus = _bus(kafka_bootstrap, partitions=1)
    producer = bus.producer(kafka_topic)
    values = [bytes([65 + i % 26]) * 100_000 + str(i).encode() for i in range(40)]
    for value in values:
        producer.send("node", value)
    producer.flush()
    producer.close()
    bound = 1024 * 1024  # ten of them and a half
    consumer = bus.consumer(kafka_topic, kafka_group)
    try:
        # when the topic is drained in batches bounded at 1 MiB of values
        batches: list[list[bytes]] = []
        for _ in range(60):
            batch = consumer.poll_batch(max_records=10_000, timeout_s=0.5, max_batch_bytes=bound)
            if batch:
                batches.append([r.value for r in batch])
                consumer.commit({0: batch[-1].offset + 1})
            if sum(map(len, batches)) >= len(values):
                break
    finally:
        consumer.close()
    # then no batch passed the bound, the bound was reached, and every message came once, in order
    assert all(sum(map(len, b)) <= bound for b in batches)
    assert max(len(b) for b in batches) == 10
    assert [v for b in batches for v in b] == values
