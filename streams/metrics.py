"""The stream consumer's Prometheus metrics and its progress, on a registry passed in (never
the global default: STYLE.md 3).

:class:`ConsumerMetrics` is the :class:`~streams.consumer.StreamConsumer`'s observer: the loop
tells it when a poll returned and when a batch was written (and whether its offsets were
committed); it times the batch step with the clock it was given, counts, and now and then asks
the bus how far behind the member is. Names carry their unit (STYLE.md 7). What an operator
watches:

* ``gpuledger_consumer_batch_duration_seconds``: poll to commit of one batch; its maximum
  must stay far below ``kafka.max_poll_interval_ms`` or the member is evicted mid-batch;
* ``gpuledger_consumer_events_total{outcome}``: ``accepted``, ``refused`` (kept in
  quarantine), ``duplicate`` (dropped by dedupe);
* ``gpuledger_consumer_lag_records{partition}`` (Kafka: end offset minus position) or
  ``gpuledger_consumer_lag_bytes{partition}`` (local bus: bytes of log after the position);
  it should come back to 0 — a value that only grows means the consumer cannot keep up;
* ``gpuledger_consumer_commit_failures_total{reason}``: ``rebalance`` (the group moved on;
  the batch is read again and deduplicated) or ``unavailable`` (the bus did not answer);
* ``gpuledger_consumer_dedupe_window_ids``: ids the dedupe holds in memory (set by the dedupe
  code through :meth:`ConsumerMetrics.set_dedupe_window`);
* ``gpuledger_consumer_last_progress_timestamp_seconds``: the last time the consumer was
  known to be keeping up — a batch committed, or a poll that found nothing to read.

The same facts, as a :class:`ConsumerProgress`, go to ``on_progress`` (the shell writes them
to the heartbeat file that ``gpuledger health`` reads) at most every ``report_every_s``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from streams.errors import StreamError

log = logging.getLogger(__name__)

#: why a batch's offsets were not committed (label of the commit-failure counter)
COMMIT_REFUSED = "rebalance"
COMMIT_UNAVAILABLE = "unavailable"
LAG_UNITS = ("records", "bytes")


class BatchCounts(Protocol):
    """What the metrics read of a batch's result (:class:`streams.pipeline.BatchResult`)."""

    @property
    def accepted(self) -> int: ...
    @property
    def refused(self) -> int: ...
    @property
    def duplicates(self) -> int: ...


class ConsumerObserver(Protocol):
    """What the consumer loop reports. Implementations must not raise: an observer that fails
    would stop the consumer for a metric."""

    def polled(self, records: int) -> None:
        """A poll returned ``records`` records (0: nothing to read)."""

    def batch_done(self, result: BatchCounts, commit_error: str | None) -> None:
        """The batch of the last poll is durably written; ``commit_error`` is ``None`` when its
        offsets were committed, else :data:`COMMIT_REFUSED` or :data:`COMMIT_UNAVAILABLE`."""


class LagSource(Protocol):
    """A bus consumer that can say how far behind it is (both of ours can)."""

    lag_unit: str  # "records" or "bytes"

    def lag(self) -> Mapping[int, int]:
        """Per assigned partition, what is left after the current position."""

    def stopped_partitions(self) -> Mapping[int, Exception]:
        """Assigned partitions stopped because storage's offset and the log disagree, each
        with the error whose one line names it (:mod:`streams.kafka.member`)."""


@dataclasses.dataclass(frozen=True, slots=True)
class ConsumerProgress:
    """A snapshot of how the consumer is doing, in UNIX seconds of the observer's clock.

    ``last_progress_s``: a batch committed, or a poll found nothing to read (the start counts
    as progress). ``lag`` is ``None`` when the bus could not say.
    """

    started_s: float
    last_poll_s: float | None
    last_progress_s: float
    last_commit_s: float | None
    batches: int
    lag: Mapping[int, int] | None
    lag_unit: str
    stopped: Mapping[int, str] | None = None  # partition -> the one line that stopped it

    @property
    def lag_total(self) -> int | None:
        return None if self.lag is None else sum(self.lag.values())


class ConsumerMetrics:
    """Prometheus metrics of one consumer process, and its :class:`ConsumerProgress`.

    ``lag``: the bus consumer, asked at most every ``report_every_s`` (a Kafka lag lookup is a
    request to the broker). ``clock``: UNIX seconds (tests pass a fake one).
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        lag: LagSource | None = None,
        clock: Callable[[], float] = time.time,
        report_every_s: float = 5.0,
        on_progress: Callable[[ConsumerProgress], None] | None = None,
    ):
        self.registry = registry
        self._lag_source = lag
        self._clock = clock
        self._report_every_s = report_every_s
        self._on_progress = on_progress
        p = "gpuledger_consumer_"
        self.batch_seconds = Histogram(
            f"{p}batch_duration_seconds",
            "Poll to commit of one batch: decode, validate, dedupe, aggregate, write, commit.",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            registry=registry,
        )
        self.batches = Counter(f"{p}batches", "Batches written.", registry=registry)
        self.events = Counter(f"{p}events", "Events by outcome.", ["outcome"], registry=registry)
        for outcome in ("accepted", "refused", "duplicate"):
            self.events.labels(outcome=outcome)
        self.commit_failures = Counter(
            f"{p}commit_failures", "Batches written whose offsets were not committed.", ["reason"], registry=registry
        )
        for reason in (COMMIT_REFUSED, COMMIT_UNAVAILABLE):
            self.commit_failures.labels(reason=reason)
        self.lag_gauges = {
            unit: Gauge(f"{p}lag_{unit}", f"What is left to read, in {unit}, per partition.", ["partition"], registry=registry)
            for unit in LAG_UNITS
        }
        self.stopped_gauge = Gauge(
            f"{p}partition_stopped",
            "1 for a partition stopped because storage's offset is beyond (or before) its log: re-base it.",
            ["partition"], registry=registry,
        )
        self._stopped: dict[int, str] = {}
        self.dedupe_window = Gauge(f"{p}dedupe_window_ids", "Event ids the dedupe holds in memory.", registry=registry)
        self.last_progress = Gauge(
            f"{p}last_progress_timestamp_seconds",
            "UNIX time of the last committed batch or of the last poll that found nothing to read.",
            registry=registry,
        )
        self.last_commit = Gauge(
            f"{p}last_commit_timestamp_seconds", "UNIX time of the last batch whose offsets were committed.",
            registry=registry,
        )
        now = clock()
        self._started_s = now
        self._last_poll_s: float | None = None
        self._last_progress_s = now
        self._last_commit_s: float | None = None
        self._batches = 0
        self._batch_started_s: float | None = None
        self._lag: Mapping[int, int] | None = None
        self._lag_partitions: set[int] = set()
        self._last_report_s: float | None = None
        self.last_progress.set(now)

    # -- ConsumerObserver ---------------------------------------------------------------

    def polled(self, records: int) -> None:
        now = self._clock()
        self._last_poll_s = now
        if records:
            self._batch_started_s = now
        else:
            self._progress(now)
        self._maybe_report(now)

    def batch_done(self, result: BatchCounts, commit_error: str | None) -> None:
        now = self._clock()
        if self._batch_started_s is not None:
            self.batch_seconds.observe(max(0.0, now - self._batch_started_s))
            self._batch_started_s = None
        self._batches += 1
        self.batches.inc()
        self.events.labels(outcome="accepted").inc(result.accepted)
        self.events.labels(outcome="refused").inc(result.refused)
        self.events.labels(outcome="duplicate").inc(result.duplicates)
        if commit_error is None:
            self._last_commit_s = now
            self.last_commit.set(now)
            self._progress(now)
        else:
            self.commit_failures.labels(reason=commit_error).inc()
        self._maybe_report(now)

    # -- set from elsewhere ---------------------------------------------------------------

    def set_dedupe_window(self, ids: int) -> None:
        """How many event ids the dedupe holds in memory now (the dedupe code calls this)."""
        self.dedupe_window.set(ids)

    def progress(self) -> ConsumerProgress:
        return ConsumerProgress(
            started_s=self._started_s,
            last_poll_s=self._last_poll_s,
            last_progress_s=self._last_progress_s,
            last_commit_s=self._last_commit_s,
            batches=self._batches,
            lag=None if self._lag is None else dict(self._lag),
            lag_unit=self._lag_source.lag_unit if self._lag_source is not None else "records",
            stopped=dict(self._stopped) or None,
        )

    def report(self) -> ConsumerProgress:
        """Ask the bus for the lag now, update the gauges and tell ``on_progress``."""
        now = self._clock()
        self._last_report_s = now
        self._update_lag()
        progress = self.progress()
        if self._on_progress is not None:
            self._on_progress(progress)
        return progress

    # -- internals ------------------------------------------------------------------------

    def _progress(self, now: float) -> None:
        self._last_progress_s = now
        self.last_progress.set(now)

    def _maybe_report(self, now: float) -> None:
        if self._last_report_s is None or now - self._last_report_s >= self._report_every_s:
            self.report()

    def _update_lag(self) -> None:
        source = self._lag_source
        if source is None:
            return
        try:
            lag = dict(source.lag())
        except StreamError as exc:  # a metric never stops the consumer
            log.warning("could not look up the consumer lag: %s", exc)
            self._lag = None
            return
        gauge = self.lag_gauges[source.lag_unit]
        for gone in self._lag_partitions - set(lag):  # partitions that moved to another member
            gauge.remove(str(gone))
        for partition, left in lag.items():
            gauge.labels(partition=str(partition)).set(left)
        self._lag_partitions = set(lag)
        self._lag = lag
        stopped = {p: str(exc) for p, exc in source.stopped_partitions().items()}
        for gone in set(self._stopped) - set(stopped):  # re-based, or moved to another member
            self.stopped_gauge.remove(str(gone))
        for partition in stopped:
            self.stopped_gauge.labels(partition=str(partition)).set(1)
        self._stopped = stopped
