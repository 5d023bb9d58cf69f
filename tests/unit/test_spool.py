"""The collector spool: durable, ordered, bounded, and never loses or silently drops events."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest

from collectors.errors import SpoolFull
from collectors.publish import encode_batch
from collectors.spool import Spool, SpoolingPublisher
from streams.bus import BusRecord
from streams.errors import BusConfigError, BusUnavailable
from streams.localbus import LocalBus
from streams.schema import UsageEvent, make_event_id

pytestmark = pytest.mark.unit


def event(node: str, minute: int, gpu: int = 0) -> UsageEvent:
    start = f"2026-11-01T00:{minute:02d}:00Z"
    end = f"2026-11-01T00:{minute + 1:02d}:00Z"
    uuid = f"GPU-{node}-{gpu}"
    return UsageEvent(
        event_id=make_event_id(node, uuid, start),
        site="test", node=node, gpu_uuid=uuid, device_uuid=uuid, gpu_model="NVIDIA B200",
        mig_profile=None, gpu_fraction=1.0, entity="gov", project="snu-llm", job_id="slurm:1",
        interval_start=start, interval_end=end, gpu_seconds=60.0, busy_gpu_seconds=30.0,
        energy_joules=1000.0, samples=6, expected_samples=6,
    )


class FlakyProducer:
    """A producer in front of the local bus that can be 'down' (the broker unreachable).

    ``fail_on``: ``"send"`` raises at send (no broker to talk to); ``"flush"`` accepts sends
    but the flush is not acknowledged (a flush timeout), so those messages were not confirmed.
    """

    def __init__(self, bus: LocalBus, topic: str = "usage"):
        self._real = bus.producer(topic)
        self.down = False
        self.fail_on = "send"
        self.sends = 0
        self._unconfirmed: list[tuple[str, bytes]] = []

    def send(self, key: str, value: bytes) -> None:
        self.sends += 1
        if self.down and self.fail_on == "send":
            raise BusUnavailable("broker unreachable")
        self._unconfirmed.append((key, value))

    def flush(self, timeout_s: float | None = None) -> None:
        if self.down:
            self._unconfirmed.clear()  # lost in flight: never acknowledged
            raise BusUnavailable("flush timed out")
        for key, value in self._unconfirmed:
            self._real.send(key, value)
        self._unconfirmed.clear()
        self._real.flush()

    def close(self) -> None:
        self.flush()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def delivered(bus: LocalBus, topic: str = "usage") -> list[BusRecord]:
    consumer = bus.consumer(topic, "check")
    return consumer.poll_batch(100_000, 0.0)


def test_with_the_bus_up_every_message_is_delivered_and_the_spool_is_empty(tmp_path: Path) -> None:
    # given a reachable bus
    bus = LocalBus(tmp_path / "bus")
    publisher = SpoolingPublisher(FlakyProducer(bus), tmp_path / "spool", max_bytes=1 << 20)
    # when two nodes publish an interval each
    publisher.publish("n1", [event("n1", 0, g) for g in range(8)])
    publisher.publish("n2", [event("n2", 0, g) for g in range(8)])
    publisher.flush()
    # then both messages are on the bus and nothing waits in the spool
    records = delivered(bus)
    assert [r.key for r in records] == [b"n1", b"n2"]
    assert records[0].value == encode_batch([event("n1", 0, g) for g in range(8)])
    assert publisher.backlog_messages == 0
    assert publisher.backlog_bytes == 0
    publisher.close()


def test_bus_down_events_spool_survive_a_restart_and_drain_in_order(tmp_path: Path) -> None:
    # given a bus that is down while the collector publishes 5 intervals
    bus = LocalBus(tmp_path / "bus")
    producer = FlakyProducer(bus)
    producer.down = True
    clock = FakeClock()
    first = SpoolingPublisher(producer, tmp_path / "spool", max_bytes=1 << 20, clock=clock)
    for minute in range(5):
        first.publish("n1", [event("n1", minute)])
    first.flush()  # must not raise: the events are safely spooled
    assert first.backlog_messages == 5
    assert delivered(bus) == []
    # when the collector restarts and the bus comes back
    first.close()
    producer.down = False
    second = SpoolingPublisher(producer, tmp_path / "spool", max_bytes=1 << 20, clock=clock)
    assert second.backlog_messages == 5
    second.publish("n1", [event("n1", 5)])
    second.flush()
    # then all 6 intervals are delivered once, in the order they were published
    values = [r.value for r in delivered(bus)]
    assert values == [encode_batch([event("n1", m)]) for m in range(6)]
    assert second.backlog_messages == 0
    second.close()


def test_a_flush_that_is_not_acknowledged_keeps_the_messages_spooled(tmp_path: Path) -> None:
    # given a bus that accepts sends but never acknowledges the flush
    bus = LocalBus(tmp_path / "bus")
    producer = FlakyProducer(bus)
    producer.down, producer.fail_on = True, "flush"
    clock = FakeClock()
    publisher = SpoolingPublisher(producer, tmp_path / "spool", max_bytes=1 << 20, clock=clock)
    # when two intervals are published
    publisher.publish("n1", [event("n1", 0)])
    clock.now += 10
    publisher.publish("n1", [event("n1", 1)])
    # then they stay in the spool (removed only after a confirmed flush) and go out later
    assert publisher.backlog_messages == 2
    producer.down = False
    publisher.flush()
    assert [r.value for r in delivered(bus)] == [encode_batch([event("n1", m)]) for m in (0, 1)]
    assert publisher.backlog_messages == 0
    publisher.close()


def test_after_a_failure_publish_waits_for_the_retry_interval(tmp_path: Path) -> None:
    # given a down bus and a retry interval of 5 s on a fake clock
    producer = FlakyProducer(LocalBus(tmp_path / "bus"))
    producer.down = True
    clock = FakeClock()
    publisher = SpoolingPublisher(
        producer, tmp_path / "spool", max_bytes=1 << 20, retry_interval_s=5.0, clock=clock
    )
    publisher.publish("n1", [event("n1", 0)])
    assert producer.sends == 1
    # when more intervals are published within the retry interval
    clock.now += 1
    publisher.publish("n1", [event("n1", 1)])
    publisher.publish("n1", [event("n1", 2)])
    # then no attempt is made (the dead broker does not slow every publish)...
    assert producer.sends == 1
    # ...until the interval has passed
    clock.now += 5
    publisher.publish("n1", [event("n1", 3)])
    assert producer.sends == 2
    assert publisher.backlog_messages == 4
    publisher.spool.close()


def test_near_full_warns_and_full_refuses_without_dropping_anything(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # given a down bus and a spool bounded to about 10 one-event messages
    producer = FlakyProducer(LocalBus(tmp_path / "bus"))
    producer.down = True
    one = len(encode_batch([event("n1", 0)])) + 14 + len("n1")  # header + key + value
    publisher = SpoolingPublisher(
        producer, tmp_path / "spool", max_bytes=10 * one + 5, clock=FakeClock()
    )
    # when 10 intervals are published
    with caplog.at_level(logging.WARNING, logger="collectors.spool"):
        for minute in range(10):
            publisher.publish("n1", [event("n1", minute)])
    # then a warning said it was nearly full (once), and the 11th is refused
    near_full = [r for r in caplog.records if "% full" in r.getMessage()]
    assert len(near_full) == 1
    with pytest.raises(SpoolFull, match="nothing dropped"):
        publisher.publish("n1", [event("n1", 10)])
    # and the 10 already spooled are all still there
    assert publisher.backlog_messages == 10
    assert [m.value for m in publisher.spool.peek(100)] == [
        encode_batch([event("n1", m)]) for m in range(10)
    ]
    publisher.spool.close()


def test_a_node_batch_split_over_messages_is_spooled_all_or_nothing(tmp_path: Path) -> None:
    # given a spool with room for one message of 3 events but not for two
    producer = FlakyProducer(LocalBus(tmp_path / "bus"))
    producer.down = True
    events = [event("n1", 0, g) for g in range(6)]
    room = len(encode_batch(events[:3])) + 14 + 10
    publisher = SpoolingPublisher(
        producer, tmp_path / "spool", max_bytes=room, max_events_per_message=3, clock=FakeClock()
    )
    # when 6 events (two messages) are published
    with pytest.raises(SpoolFull):
        publisher.publish("n1", events)
    # then neither half is in the spool
    assert publisher.backlog_messages == 0
    publisher.spool.close()


def test_a_torn_tail_is_set_aside_and_the_whole_records_survive(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # given a spool with 3 messages and a crash in the middle of a 4th append
    spool = Spool(tmp_path / "spool", max_bytes=1 << 20)
    spool.append_all([("n1", b"a" * 100), ("n1", b"b" * 100), ("n1", b"c" * 100)])
    spool.close()
    segment = next((tmp_path / "spool").glob("seg-*.spool"))
    whole = segment.stat().st_size
    with open(segment, "ab") as f:
        f.write(b"GLS1\x00\x00\x00\x01\x00\x02n1\x00")  # header and key, value missing
    # when the spool is opened again
    with caplog.at_level(logging.WARNING, logger="collectors.spool"):
        again = Spool(tmp_path / "spool", max_bytes=1 << 20)
    # then the 3 whole records are there, the torn bytes are kept aside, and it was logged
    assert [m.value for m in again.peek(10)] == [b"a" * 100, b"b" * 100, b"c" * 100]
    assert segment.stat().st_size == whole
    assert list((tmp_path / "spool").glob("*.torn"))
    assert any("cut short by a crash" in r.getMessage() for r in caplog.records)
    # and appending goes on after the last whole record
    again.append_all([("n1", b"d")])
    assert [m.value for m in again.peek(10)][-1] == b"d"
    again.close()


def test_confirmed_messages_are_gone_after_a_restart_unconfirmed_ones_are_not(tmp_path: Path) -> None:
    # given 5 spooled messages of which the first 2 were confirmed
    spool = Spool(tmp_path / "spool", max_bytes=1 << 20, segment_bytes=64)
    spool.append_all([("n", bytes([i]) * 40) for i in range(5)])
    first_two = spool.peek(2)
    spool.confirm(first_two[-1].end, 2)
    spool.close()
    # when it is reopened
    again = Spool(tmp_path / "spool", max_bytes=1 << 20, segment_bytes=64)
    # then exactly the last 3 remain, in order
    assert again.messages == 3
    assert [m.value[0] for m in again.peek(10)] == [2, 3, 4]
    again.close()


def test_segments_roll_and_are_deleted_once_delivered(tmp_path: Path) -> None:
    # given small segments and a backlog spread over several of them
    bus = LocalBus(tmp_path / "bus")
    producer = FlakyProducer(bus)
    producer.down = True
    clock = FakeClock()
    publisher = SpoolingPublisher(
        producer, tmp_path / "spool", max_bytes=1 << 20, segment_bytes=1024,
        drain_batch_messages=3, clock=clock,
    )
    for minute in range(20):
        publisher.publish("n1", [event("n1", minute)])
    assert len(list((tmp_path / "spool").glob("seg-*.spool"))) > 3
    # when the bus is back and the spool drains
    producer.down = False
    publisher.flush()
    # then everything arrived in order and only one (empty) segment is left
    assert [r.value for r in delivered(bus)] == [encode_batch([event("n1", m)]) for m in range(20)]
    segments = list((tmp_path / "spool").glob("seg-*.spool"))
    assert len(segments) == 1 and segments[0].stat().st_size == 0
    publisher.close()


def test_a_configuration_error_propagates_and_keeps_the_data(tmp_path: Path) -> None:
    # given a producer whose credentials are refused
    class Refused(FlakyProducer):
        def send(self, key: str, value: bytes) -> None:
            raise BusConfigError("SASL authentication failed")

    publisher = SpoolingPublisher(
        Refused(LocalBus(tmp_path / "bus")), tmp_path / "spool", max_bytes=1 << 20
    )
    # when an interval is published, then the error is not swallowed, and the event is kept
    with pytest.raises(BusConfigError):
        publisher.publish("n1", [event("n1", 0)])
    assert publisher.backlog_messages == 1
    publisher.spool.close()


def test_retries_back_off_while_the_outage_lasts_and_reset_when_it_ends(tmp_path: Path) -> None:
    # given a down bus, retries every 5 s doubling up to 20 s, on a fake clock
    bus = LocalBus(tmp_path / "bus")
    producer = FlakyProducer(bus)
    producer.down = True
    clock = FakeClock()
    publisher = SpoolingPublisher(
        producer, tmp_path / "spool", max_bytes=1 << 20, retry_interval_s=5.0,
        max_retry_interval_s=20.0, clock=clock,
    )
    # when an interval is published every second for a minute
    attempts_at = []
    for second in range(60):
        before = producer.sends
        publisher.publish("n1", [event("n1", second % 50)])
        if producer.sends > before:
            attempts_at.append(second)
        clock.now += 1
    # then the attempts come 5, 10, 20, 20 … seconds apart
    assert attempts_at == [0, 5, 15, 35, 55]
    # and once the bus is back, the next attempt delivers everything and the pace resets
    producer.down = False
    clock.now += 20
    publisher.publish("n1", [event("n1", 0, gpu=1)])
    assert publisher.backlog_messages == 0
    producer.down = True
    publisher.publish("n1", [event("n1", 1, gpu=1)])
    clock.now += 5
    before = producer.sends
    publisher.publish("n1", [event("n1", 2, gpu=1)])
    assert producer.sends > before  # 5 s again, not 20
    publisher.spool.close()


class StuckProducer(FlakyProducer):
    """A broker that does not answer: every send blocks until ``answer`` is set."""

    def __init__(self, bus: LocalBus):
        super().__init__(bus)
        self.answer = threading.Event()
        self.stuck = threading.Event()

    def send(self, key: str, value: bytes) -> None:
        self.stuck.set()
        assert self.answer.wait(timeout=30), "the test never answered"
        super().send(key, value)


def test_in_the_background_publishing_never_waits_on_the_bus(tmp_path: Path) -> None:
    bus = LocalBus(tmp_path / "bus")
    producer = StuckProducer(bus)
    publisher = SpoolingPublisher(producer, tmp_path / "spool", max_bytes=1 << 20, background=True)
    try:
        publisher.publish("n1", [event("n1", 0)])
        assert producer.stuck.wait(timeout=10)  # the sender thread is blocked on the bus now
        sampler = threading.Thread(target=lambda: [publisher.publish("n1", [event("n1", m)]) for m in range(1, 20)])
        sampler.start()
        sampler.join(timeout=10)
        assert not sampler.is_alive()  # 19 more intervals spooled while the bus hangs
        assert publisher.backlog_messages == 20
        producer.answer.set()  # the broker answers again
        deadline = time.monotonic() + 20
        while publisher.backlog_messages and time.monotonic() < deadline:
            time.sleep(0.02)
        assert publisher.backlog_messages == 0
    finally:
        producer.answer.set()
        publisher.close()
    assert [r.value for r in delivered(bus)] == [encode_batch([event("n1", m)]) for m in range(20)]


def test_in_the_background_a_dead_bus_keeps_everything_spooled_for_the_next_start(tmp_path: Path) -> None:
    bus = LocalBus(tmp_path / "bus")
    producer = FlakyProducer(bus)
    producer.down = True
    publisher = SpoolingPublisher(producer, tmp_path / "spool", max_bytes=1 << 20, background=True,
                                  retry_interval_s=0.01, max_retry_interval_s=0.05)
    for m in range(5):
        publisher.publish("n1", [event("n1", m)])
    publisher.close()  # a last attempt fails too: nothing is lost, all of it stays spooled
    assert delivered(bus) == []
    producer.down = False
    again = SpoolingPublisher(producer, tmp_path / "spool", max_bytes=1 << 20, background=True)
    again.close()
    assert [r.value for r in delivered(bus)] == [encode_batch([event("n1", m)]) for m in range(5)]
