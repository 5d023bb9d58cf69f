"""Consumer metrics and the health verdict, on the local bus with a fake clock.

Given a consumer loop over a real local bus and store, when batches are written, then the
Prometheus registry counts them, the lag comes back to zero, commit failures are counted by
reason, and the heartbeat says whether the consumer keeps up.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from spine_events import ACCOUNTS, event, jsonl

from gpuledger.health import HealthError, HeartbeatFile, assess
from storage.dataset import Store
from streams.bus import DEFAULT_MAX_BATCH_BYTES
from streams.consumer import StreamConsumer
from streams.dedupe import EventWindow
from streams.errors import BusUnavailable
from streams.localbus import LocalBus
from streams.metrics import ConsumerMetrics, ConsumerProgress
from streams.pipeline import BatchProcessor

pytestmark = pytest.mark.unit
TOPIC = "gpu.usage.v1"


class FakeClock:
    def __init__(self, now: float = 1_800_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


class SlowStep:
    """The real batch processor, during which ``step_s`` seconds pass on the fake clock."""

    def __init__(self, inner: BatchProcessor, clock: FakeClock, step_s: float):
        self._inner, self._clock, self._step_s = inner, clock, step_s

    def __getattr__(self, name: str):  # window, stored_offsets: the real processor's
        return getattr(self._inner, name)

    def process(self, messages, positions=None):
        result = self._inner.process(messages)
        self._clock.now += self._step_s
        return result


class CommitOutcome:
    """A local consumer whose commits fail the way the Kafka bus reports them: ``refused``
    commits return False (the group rebalanced), ``unavailable`` ones raise."""

    def __init__(self, inner, refused: int = 0, unavailable: int = 0):
        self._inner, self.refused, self.unavailable = inner, refused, unavailable
        self.lag_unit = inner.lag_unit

    def poll_batch(self, max_records: int, timeout_s: float, max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES):
        return self._inner.poll_batch(max_records, timeout_s, max_batch_bytes)

    def commit(self, next_offsets):
        if self.unavailable:
            self.unavailable -= 1
            raise BusUnavailable("commit timed out (test)")
        if self.refused:
            self.refused -= 1
            return False
        return self._inner.commit(next_offsets)

    def lag(self) -> Mapping[int, int]:
        return self._inner.lag()

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


def publish(bus: LocalBus, *payloads: bytes) -> None:
    producer = bus.producer(TOPIC)
    for payload in payloads:
        producer.send("n1", payload)
    producer.flush()


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_a_batch_is_timed_counted_and_the_lag_drains(tmp_path: Path) -> None:
    bus = LocalBus(tmp_path / "bus")
    first = [event(f"2026-11-02T00:{m:02d}:00Z") for m in range(3)]
    publish(bus, jsonl(*first), jsonl(*first[:2], event("2026-11-02T00:09:00Z", entity="nobody")))
    log_bytes = (tmp_path / "bus" / TOPIC / "log").stat().st_size
    clock = FakeClock()
    registry = CollectorRegistry()
    source = bus.consumer(TOPIC, "g")
    metrics = ConsumerMetrics(registry, lag=source, clock=clock, report_every_s=2)
    metrics.report()
    assert value(registry, "gpuledger_consumer_lag_bytes", partition="0") == log_bytes

    stream = StreamConsumer(
        source, SlowStep(BatchProcessor(Store(tmp_path / "data"), ACCOUNTS), clock, 2.5), observer=metrics
    )
    result = stream.run_once()

    assert result is not None and (result.accepted, result.refused, result.duplicates) == (3, 1, 2)
    assert value(registry, "gpuledger_consumer_events_total", outcome="accepted") == 3
    assert value(registry, "gpuledger_consumer_events_total", outcome="refused") == 1
    assert value(registry, "gpuledger_consumer_events_total", outcome="duplicate") == 2
    assert value(registry, "gpuledger_consumer_batches_total") == 1
    assert value(registry, "gpuledger_consumer_batch_duration_seconds_count") == 1
    assert value(registry, "gpuledger_consumer_batch_duration_seconds_sum") == 2.5
    assert value(registry, "gpuledger_consumer_batch_duration_seconds_bucket", le="2.5") == 1
    assert value(registry, "gpuledger_consumer_batch_duration_seconds_bucket", le="1.0") == 0
    assert value(registry, "gpuledger_consumer_last_commit_timestamp_seconds") == clock.now
    assert value(registry, "gpuledger_consumer_lag_bytes", partition="0") == 0  # 2.5 s after the last look: looked up again
    assert value(registry, "gpuledger_consumer_commit_failures_total", reason="rebalance") == 0


def test_commit_failures_are_counted_by_reason_and_are_no_progress(tmp_path: Path) -> None:
    bus = LocalBus(tmp_path / "bus")
    publish(bus, *(jsonl(event(f"2026-11-02T00:{m:02d}:00Z")) for m in range(3)))
    clock = FakeClock()
    registry = CollectorRegistry()
    source = CommitOutcome(bus.consumer(TOPIC, "g"), refused=1, unavailable=1)
    metrics = ConsumerMetrics(registry, lag=source, clock=clock)
    stream = StreamConsumer(source, BatchProcessor(Store(tmp_path / "data"), ACCOUNTS), max_batch_records=1,
                            observer=metrics)
    started = clock.now

    clock.now += 10
    with pytest.raises(BusUnavailable):
        stream.run_once()
    clock.now += 10
    stream.run_once()  # written; the group refused the commit

    assert value(registry, "gpuledger_consumer_commit_failures_total", reason="unavailable") == 1
    assert value(registry, "gpuledger_consumer_commit_failures_total", reason="rebalance") == 1
    assert value(registry, "gpuledger_consumer_batches_total") == 2
    assert metrics.progress().last_commit_s is None
    assert metrics.progress().last_progress_s == started  # nothing committed since the start

    clock.now += 10
    stream.run_once()
    assert metrics.progress().last_commit_s == clock.now
    assert value(registry, "gpuledger_consumer_last_progress_timestamp_seconds") == clock.now


def test_an_empty_poll_is_progress_but_not_a_commit(tmp_path: Path) -> None:
    bus = LocalBus(tmp_path / "bus")
    clock = FakeClock()
    metrics = ConsumerMetrics(CollectorRegistry(), lag=bus.consumer(TOPIC, "probe"), clock=clock)
    stream = StreamConsumer(bus.consumer(TOPIC, "g"), BatchProcessor(Store(tmp_path / "data"), ACCOUNTS),
                            observer=metrics)
    clock.now += 42
    assert stream.run_once() is None
    progress = metrics.progress()
    assert (progress.last_poll_s, progress.last_progress_s, progress.last_commit_s) == (clock.now, clock.now, None)


class FakeLag:
    lag_unit = "records"

    def __init__(self, *answers: dict[int, int]):
        self._answers = list(answers)

    def lag(self) -> Mapping[int, int]:
        return self._answers.pop(0)

    def stopped_partitions(self) -> Mapping[int, Exception]:
        return {}


def test_progress_is_reported_at_most_every_interval_and_lag_follows_the_assignment() -> None:
    clock = FakeClock()
    reports: list[ConsumerProgress] = []
    registry = CollectorRegistry()
    metrics = ConsumerMetrics(
        registry, lag=FakeLag({0: 5, 1: 3}, {1: 7}), clock=clock, report_every_s=5, on_progress=reports.append
    )
    metrics.polled(0)  # first report
    for _ in range(4):
        clock.now += 1
        metrics.polled(0)  # within 5 s of the last report: not again
    assert len(reports) == 1 and reports[0].lag == {0: 5, 1: 3}
    clock.now += 1
    metrics.polled(0)
    assert len(reports) == 2 and reports[1].lag == {1: 7}
    assert value(registry, "gpuledger_consumer_lag_records", partition="0") is None  # moved to another member
    assert value(registry, "gpuledger_consumer_lag_records", partition="1") == 7


def test_the_dedupe_window_gauge_follows_the_ids_the_loop_holds(tmp_path: Path) -> None:
    # given 5 distinct events in hour 00, then 2 re-sends of them, then 1 event at 05:00, one
    # message per batch, through the consumer loop and its 2-hour dedupe window
    bus = LocalBus(tmp_path / "bus")
    events = [event(f"2026-11-02T00:{m:02d}:00Z") for m in range(5)]
    publish(bus, jsonl(*events), jsonl(*events[:2]), jsonl(event("2026-11-02T05:00:00Z")))
    registry = CollectorRegistry()
    source = bus.consumer(TOPIC, "g")
    metrics = ConsumerMetrics(registry, lag=source, clock=FakeClock())
    store = Store(tmp_path / "data")
    stream = StreamConsumer(
        source, BatchProcessor(store, ACCOUNTS, EventWindow(store, 2)), max_batch_records=1, observer=metrics
    )
    # then after each batch the gauge says the ids held then: 5 (not 0), still 5 after the
    # re-sends (not 7 lines, not 5 + 5), and 1 once hour 00 has left the window (not 6)
    held = []
    for _ in range(3):
        stream.run_once()
        held.append(value(registry, "gpuledger_consumer_dedupe_window_ids"))
    assert held == [5, 5, 1]
    assert value(registry, "gpuledger_consumer_events_total", outcome="duplicate") == 2


# -- the health verdict ---------------------------------------------------------------------

T0 = 1_800_000_000.0


def progress(*, progress_s: float, commit_s: float | None, lag: dict[int, int] | None) -> ConsumerProgress:
    return ConsumerProgress(
        started_s=T0, last_poll_s=progress_s, last_progress_s=progress_s, last_commit_s=commit_s,
        batches=0 if commit_s is None else 1, lag=lag, lag_unit="records",
    )


@pytest.mark.parametrize(
    ("case", "beat", "now", "unhealthy"),
    [
        ("just committed", progress(progress_s=T0 + 100, commit_s=T0 + 100, lag={0: 10}), T0 + 110, []),
        ("idle, caught up, long after the last commit",
         progress(progress_s=T0 + 1000, commit_s=T0 + 10, lag={0: 0}), T0 + 1001, []),
        ("no progress since",
         progress(progress_s=T0 + 100, commit_s=T0 + 100, lag={0: 0}), T0 + 401, ["no progress for 301 s"]),
        ("polls but the backlog waits",
         progress(progress_s=T0 + 990, commit_s=T0 + 600, lag={0: 7, 3: 5}), T0 + 1000,
         ["12 records waiting and no batch committed for 400 s"]),
        ("backlog since the start, nothing committed",
         progress(progress_s=T0 + 350, commit_s=None, lag={0: 1}), T0 + 360, ["no batch committed for 360 s"]),
        ("lag unknown: only staleness counts", progress(progress_s=T0 + 100, commit_s=None, lag=None), T0 + 390, []),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_assess(case: str, beat: ConsumerProgress, now: float, unhealthy: list[str]) -> None:
    problems = assess(beat, now, max_stale_s=300)
    assert len(problems) == len(unhealthy), problems
    for problem, expected in zip(problems, unhealthy, strict=True):
        assert expected in problem


def test_the_heartbeat_reads_back_what_was_written(tmp_path: Path) -> None:
    beat = progress(progress_s=T0 + 5, commit_s=T0 + 4, lag={0: 3, 11: 0})
    file = HeartbeatFile(tmp_path / "run" / "consumer.heartbeat.json", pid=7)
    file.write(beat)
    assert file.read() == beat
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["consumer.heartbeat.json"]  # no temp file left


def test_a_missing_or_foreign_heartbeat_is_an_error_that_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(HealthError, match="no heartbeat at .*HEARTBEAT_FILE"):
        HeartbeatFile(tmp_path / "none.json").read()
    (tmp_path / "other.json").write_text('{"hello": 1}')
    with pytest.raises(HealthError, match="not a gpuledger consumer heartbeat"):
        HeartbeatFile(tmp_path / "other.json").read()


def test_a_stuck_batch_step_makes_the_last_heartbeat_stale(tmp_path: Path) -> None:
    """Given a consumer whose batch step hangs, the heartbeat it wrote before the step ages;
    health judged after the limit says so, and once the step ends it is healthy again."""
    bus = LocalBus(tmp_path / "bus")
    publish(bus, jsonl(event("2026-11-02T00:00:00Z")))
    clock = FakeClock()
    file = HeartbeatFile(tmp_path / "hb.json")
    source = bus.consumer(TOPIC, "g")
    metrics = ConsumerMetrics(CollectorRegistry(), lag=source, clock=clock, on_progress=file.write)
    metrics.report()
    stream = StreamConsumer(source, SlowStep(BatchProcessor(Store(tmp_path / "data"), ACCOUNTS), clock, 400),
                            observer=metrics)
    before = file.read()
    assert before.lag_total and before.lag_total > 0
    assert assess(before, clock.now + 400, 300) != []  # what the health check sees during the step
    stream.run_once()
    after = file.read()
    assert after.lag_total == 0 and after.last_commit_s == clock.now
    assert assess(after, clock.now + 1, 300) == []


def test_the_compose_consumer_health_check_is_gpuledger_health() -> None:
    """docker-compose.yml's consumer is judged by its progress, not by being alive."""
    import yaml

    from gpuledger.cli import app

    compose = yaml.safe_load((Path(__file__).resolve().parents[2] / "docker-compose.yml").read_text())
    test = compose["services"]["consumer"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "gpuledger", "health"] and "--max-stale-s" in test
    assert "health" in {c.name or c.callback.__name__ for c in app.registered_commands}
    assert compose["services"]["consumer"]["environment"]["GPULEDGER_CONSUMER__METRICS_PORT"] == "9401"


def test_compose_replicas_each_judge_their_own_heartbeat() -> None:
    """`--scale consumer=N` shares the data volume: the heartbeat must not live on it."""
    import yaml

    compose = yaml.safe_load((Path(__file__).resolve().parents[2] / "docker-compose.yml").read_text())
    consumer = compose["services"]["consumer"]
    beat = consumer["environment"]["GPULEDGER_CONSUMER__HEARTBEAT_FILE"]
    mounts = [volume.split(":")[1] for volume in consumer["volumes"]]
    assert not any(beat.startswith(mount.rstrip("/") + "/") for mount in mounts)
