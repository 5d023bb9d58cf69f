"""Consumer metrics on the real broker: lag from end offsets, and a batch step longer than
``max_poll_interval_ms`` that gets the member evicted mid-batch, counted as a refused commit."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from gpuledger.settings import KafkaSettings
from storage.dataset import Store
from streams.consumer import StreamConsumer
from streams.kafka import KafkaBus
from streams.metrics import ConsumerMetrics
from streams.pipeline import BatchProcessor

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from spine_events import ACCOUNTS, event, jsonl  # noqa: E402

pytestmark = pytest.mark.integration


def _bus(bootstrap: str, **settings) -> KafkaBus:
    return KafkaBus(KafkaSettings(bootstrap=bootstrap, **settings), connect_timeout_s=10.0)


def _publish(bus: KafkaBus, topic: str, messages: int) -> None:
    producer = bus.producer(topic)
    for m in range(messages):
        producer.send(f"n{m % 6}", jsonl(event(f"2026-11-02T00:{m:02d}:00Z", node=f"n{m % 6}", gpu=f"GPU-{m % 6}")))
    producer.flush()
    producer.close()


def test_lag_is_end_offsets_minus_position_per_partition(
    kafka_bootstrap: str, kafka_topic: str, kafka_group: str
) -> None:
    bus = _bus(kafka_bootstrap, partitions=3)
    bus.ensure_topics([kafka_topic])
    _publish(bus, kafka_topic, 30)
    consumer = bus.consumer(kafka_topic, kafka_group)
    try:
        assert consumer.lag() == {}  # not in the group yet: no partitions to be behind on
        first = consumer.poll_batch(max_records=5, timeout_s=5.0)
        assert len(first) == 5
        lag = consumer.lag()
        assert set(lag) == {0, 1, 2} and sum(lag.values()) == 25
        read = len(first)
        for _ in range(60):  # a bounded number of polls, never a sleep
            read += len(consumer.poll_batch(max_records=1000, timeout_s=0.5))
            if read >= 30:
                break
        assert read == 30
        assert consumer.lag() == {0: 0, 1: 0, 2: 0}
    finally:
        consumer.close()


class WaitsForEviction:
    """The real batch processor, whose step lasts until another member holds every partition
    (so the step outlasts ``max_poll_interval_ms``)."""

    def __init__(self, inner: BatchProcessor, evicted: threading.Event):
        self._inner, self._evicted = inner, evicted

    def __getattr__(self, name: str):  # window, stored_offsets: the real processor's
        return getattr(self._inner, name)

    def process(self, messages, positions=None):
        assert self._evicted.wait(120), "the other member never got the partitions: max_poll_interval_ms not applied?"
        return self._inner.process(messages, positions)


def test_a_step_longer_than_max_poll_interval_is_evicted_and_its_commit_counted_refused(
    kafka_bootstrap: str, kafka_topic: str, kafka_group: str, tmp_path: Path
) -> None:
    # given a member with a 10 s max_poll_interval_ms (Kafka's default would be 5 minutes)
    bus = _bus(kafka_bootstrap, partitions=2, max_poll_interval_ms=10_000)
    bus.ensure_topics([kafka_topic])
    _publish(bus, kafka_topic, 4)
    registry = CollectorRegistry()
    first = bus.consumer(kafka_topic, kafka_group)
    metrics = ConsumerMetrics(registry, lag=first)
    evicted = threading.Event()
    stream = StreamConsumer(first, WaitsForEviction(BatchProcessor(Store(tmp_path), ACCOUNTS), evicted),
                            max_batch_records=2, observer=metrics)
    other = bus.consumer(kafka_topic, kafka_group)
    stop = threading.Event()

    def other_member() -> None:  # joins, and keeps polling as a healthy member does
        while not stop.is_set():
            other.poll_batch(10, 0.2)
            if other.assigned_partitions() == [0, 1]:
                evicted.set()

    # when its batch step hangs while another member joins
    thread = threading.Thread(target=other_member)
    try:
        first.poll_batch(1, 5.0)  # join first, alone (this record is not committed)
        assert first.assigned_partitions() == [0, 1]
        thread.start()
        result = stream.run_once()
    finally:
        stop.set()
        if thread.is_alive():
            thread.join(timeout=30)
        other.close()
        stream.close()

    # then the group moved the partitions on, the batch was written, and its commit was refused
    assert result is not None and result.accepted >= 1
    value = registry.get_sample_value
    assert value("gpuledger_consumer_commit_failures_total", {"reason": "rebalance"}) == 1
    assert value("gpuledger_consumer_batches_total") == 1
    assert metrics.progress().last_commit_s is None
