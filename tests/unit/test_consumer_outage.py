"""A long-running consumer waits out an unreachable bus; a one-shot drain reports it."""

from __future__ import annotations

import threading
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from spine_events import ACCOUNTS, event, jsonl

from storage.dataset import Store
from streams.bus import DEFAULT_MAX_BATCH_BYTES
from streams.consumer import StreamConsumer
from streams.errors import BusUnavailable
from streams.localbus import LocalBus
from streams.pipeline import BatchProcessor

pytestmark = pytest.mark.unit


class Flaky:
    """A local consumer whose bus fails ``polls`` polls and ``commits`` commits, then works."""

    def __init__(self, inner, polls: int = 0, commits: int = 0):
        self._inner, self.polls, self.commits = inner, polls, commits

    def poll_batch(self, max_records: int, timeout_s: float, max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES):
        if self.polls:
            self.polls -= 1
            raise BusUnavailable("broker unreachable (test)")
        return self._inner.poll_batch(max_records, timeout_s, max_batch_bytes)

    def commit(self, next_offsets) -> None:
        if self.commits:
            self.commits -= 1
            raise BusUnavailable("commit timed out (test)")
        self._inner.commit(next_offsets)

    def caught_up(self) -> bool:
        return self._inner.caught_up()

    def stopped_partitions(self):
        return self._inner.stopped_partitions()

    @property
    def topic(self) -> str:
        return self._inner.topic

    def listen(self, listener) -> None:
        self._inner.listen(listener)

    def close(self) -> None:
        self._inner.close()


def publish(bus: LocalBus, minutes: range) -> None:
    producer = bus.producer("gpu.usage.v1")
    for m in minutes:
        producer.send("n1", jsonl(event(f"2026-11-02T00:{m:02d}:00Z")))
    producer.flush()


def test_a_running_consumer_waits_for_the_bus_and_then_stores_everything_once(tmp_path: Path) -> None:
    bus = LocalBus(tmp_path / "bus")
    publish(bus, range(6))
    flaky = Flaky(bus.consumer("gpu.usage.v1", "g"), polls=2, commits=1)
    store = Store(tmp_path / "data")
    stream = StreamConsumer(flaky, BatchProcessor(store, ACCOUNTS), max_batch_records=2,
                            retry_s=0.01, retry_max_s=0.02)
    stop = threading.Event()
    guard = threading.Timer(30, stop.set)  # a bounded loop even if the test fails
    guard.start()

    def stored() -> int:
        return sum(pq.read_metadata(f).num_rows for f in store.files("raw"))

    try:
        totals = stream.run(stop=stop, on_batch=lambda _r: stored() == 6 and stop.set())
    finally:
        guard.cancel()
    assert (flaky.polls, flaky.commits) == (0, 0)  # both kinds of failure happened
    assert stored() == 6
    assert totals.accepted == 4  # the batch whose commit failed was stored but not counted done
    stream.close()  # the group's one consumer stops; the restart takes the group over
    restarted = StreamConsumer(bus.consumer("gpu.usage.v1", "g"), BatchProcessor(store, ACCOUNTS))
    again = restarted.run(until_idle=True, idle_polls=1)
    assert again.accepted == 0


def test_a_one_shot_drain_reports_the_unreachable_bus(tmp_path: Path) -> None:
    bus = LocalBus(tmp_path / "bus")
    publish(bus, range(2))
    flaky = Flaky(bus.consumer("gpu.usage.v1", "g"), polls=1)
    stream = StreamConsumer(flaky, BatchProcessor(Store(tmp_path / "data"), ACCOUNTS), retry_s=0.01)
    with pytest.raises(BusUnavailable, match="unreachable"):
        stream.run(until_idle=True)
