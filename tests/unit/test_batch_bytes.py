"""A batch is bounded by bytes as well as by messages (`[consumer] max_batch_bytes`): the poll
stops before the record that would take its values past the bound, so the batch step's memory
does not grow with the size of the messages; no record is skipped or read twice at the cut."""

from __future__ import annotations

from pathlib import Path

import pytest
from spine_events import event, jsonl

from accounting.registry import load_registry
from gpuledger.settings import DEFAULT_MAX_BATCH_BYTES, SettingsError, load_settings
from gpuledger.wiring import accounts_of
from storage.dataset import Store
from storage.schemas import RAW_EVENTS
from streams.consumer import StreamConsumer
from streams.localbus import LocalBus
from streams.pipeline import BatchProcessor

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]


def test_a_local_poll_stops_before_the_record_that_would_pass_the_bound(tmp_path) -> None:
    bus = LocalBus(tmp_path)
    producer = bus.producer("t")
    values = [bytes([65 + i]) * 100 for i in range(10)] + [b"x" * 1000, b"y" * 10]
    for value in values:
        producer.send("node", value)
    producer.flush()
    consumer = bus.consumer("t", "g")

    batches = []
    while batch := consumer.poll_batch(100, 0.0, max_batch_bytes=350):
        batches.append([r.value for r in batch])
        consumer.commit({0: batch[-1].offset + 1})

    # three 100-byte records fit 350, a fourth would not; a record larger than the bound
    # still moves, alone; nothing is skipped or read twice at the cuts
    assert [len(b) for b in batches] == [3, 3, 3, 1, 1, 1]
    assert [v for b in batches for v in b] == values
    assert batches[4] == [b"x" * 1000]


def test_the_stopping_record_is_the_first_of_the_next_batch_after_a_restart(tmp_path) -> None:
    bus = LocalBus(tmp_path)
    producer = bus.producer("t")
    for i in range(4):
        producer.send("node", f"m{i}".encode() * 50)  # 100 bytes each
    producer.flush()
    first = bus.consumer("t", "g")
    batch = first.poll_batch(100, 0.0, max_batch_bytes=250)
    assert [r.offset for r in batch] == [0, 1]
    first.commit({0: batch[-1].offset + 1})
    first.close()
    assert [r.offset for r in bus.consumer("t", "g").poll_batch(100, 0.0, max_batch_bytes=250)] == [2, 3]


def test_the_consumer_batches_by_the_byte_setting_and_stores_every_event_once(tmp_path) -> None:
    # given 40 messages of 5 events each on the local bus
    bus = LocalBus(tmp_path / "bus")
    producer = bus.producer("gpu.usage.v1")
    values = []
    for m in range(40):
        value = jsonl(*(event(f"2026-10-01T{m % 24:02d}:{s * 10:02d}:00Z", node=f"n{m}", gpu=f"GPU-{m}") for s in range(5)))
        values.append(value)
        producer.send(f"n{m}", value)
    producer.flush()
    bound = 4 * len(values[0]) + len(values[0]) // 2  # four messages and a half

    # when a consumer with that byte bound (and a message bound far above it) drains the topic
    batches = []
    store = Store(tmp_path / "data")
    consumer = StreamConsumer(
        bus.consumer("gpu.usage.v1", "g"),
        BatchProcessor(store, accounts_of(load_registry(REPO / "examples/registry.toml"))),
        max_batch_records=10_000,
        max_batch_bytes=bound,
        before_commit=batches.append,
    )
    with consumer:
        consumer.run(until_idle=True, idle_polls=1)

    # then every batch stopped at the bound: its values fit, one more message would not
    sizes = [len(v) for v in values]
    start = 0
    for result in batches:
        end = start + result.messages
        assert sum(sizes[start:end]) <= bound
        if end < len(sizes):
            assert sum(sizes[start : end + 1]) > bound
        start = end
    assert start == len(values) and len(batches) >= 8
    # and every event is stored exactly once
    raw = store.scan("raw", RAW_EVENTS).collect()
    assert raw.height == 200 and raw["event_id"].n_unique() == 200


def test_the_byte_setting_is_validated(tmp_path, monkeypatch) -> None:
    for name in list(__import__("os").environ):
        if name.startswith("GPULEDGER_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("GPULEDGER_CONFIG", "")
    assert load_settings().consumer.max_batch_bytes == DEFAULT_MAX_BATCH_BYTES == 8 * 1024 * 1024
    monkeypatch.setenv("GPULEDGER_CONSUMER__MAX_BATCH_BYTES", str(1024 * 1024))
    assert load_settings().consumer.max_batch_bytes == 1024 * 1024
    for wrong in (1024 * 1024 - 1, 16 * 1024 * 1024 + 1):
        monkeypatch.setenv("GPULEDGER_CONSUMER__MAX_BATCH_BYTES", str(wrong))
        with pytest.raises(SettingsError, match="max_batch_bytes"):
            load_settings()
