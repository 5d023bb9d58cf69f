"""The collector agent: sample on a fixed period, integrate, publish each closed interval.

:class:`CollectorAgent` owns the loop that ``gpuledger collect`` runs on every GPU node:

* it samples at the multiples of ``sample_period_s`` (wall clock), so every interval gets
  the same number of samples and a late wake-up does not shift the grid; a round that took
  longer than a period skips the missed ticks (the integrator then marks the interval
  ``partial_interval``, nothing is invented);
* each round goes to the :class:`~collectors.integrate.IntervalIntegrator`; the events of the
  intervals it closes go to the :class:`~collectors.publish.Publisher` as one batch;
* :meth:`stop` (the CLI calls it on SIGTERM/SIGINT) ends the loop at once; :meth:`run` then
  closes the open interval with ``flush`` and hands it to the publisher, which sends or
  spools it, before returning;
* a publisher that refuses a batch (spool full) does not lose it: the batch stays in a
  bounded in-memory buffer and is offered again with the next one.

Clock and waiting are passed in, so tests run the loop in simulated time.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Protocol

from collectors.device import DeviceReader, DeviceSample
from collectors.errors import CollectorError
from collectors.metrics import CollectorMetrics
from collectors.publish import Publisher
from streams.errors import BusUnavailable
from streams.schema import UsageEvent, parse_timestamp

log = logging.getLogger("gpuledger.collector")

_RECORD_FIELDS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class Integrator(Protocol):
    """What the agent needs of :class:`collectors.integrate.IntervalIntegrator`."""

    def add(self, samples: Sequence[DeviceSample]) -> list[UsageEvent]: ...

    def advance(self, timestamp_s: float) -> list[UsageEvent]: ...

    def flush(self) -> list[UsageEvent]: ...

    def snapshot(self) -> dict: ...

    def restore(self, snapshot: dict) -> list[UsageEvent]: ...


class Checkpoint(Protocol):
    """Keeps the open interval across a restart (``collectors.checkpoint.FileCheckpoint``)."""

    def load(self) -> dict | None: ...

    def save(self, state: dict) -> None: ...

    def clear(self) -> None: ...


@dataclasses.dataclass(slots=True)
class RunStats:
    rounds: int = 0
    samples: int = 0
    events_published: int = 0
    events_pending: int = 0
    events_dropped: int = 0


class CollectorAgent:
    """Runs one node's collection loop (see the module docstring).

    ``clock`` gives wall-clock UNIX seconds; ``wait(seconds)`` blocks for up to that long and
    returns early when :meth:`stop` is called (default: an internal event). ``spool_depth``
    returns ``(bytes, messages)`` waiting in the spool, for the metrics.
    """

    def __init__(
        self,
        reader: DeviceReader,
        integrator: Integrator,
        publisher: Publisher,
        *,
        node: str,
        sample_period_s: float = 10.0,
        clock: Callable[[], float] = time.time,
        wait: Callable[[float], None] | None = None,
        metrics: CollectorMetrics | None = None,
        spool_depth: Callable[[], tuple[int, int]] | None = None,
        max_pending_events: int = 100_000,
        checkpoint: Checkpoint | None = None,
    ):
        if sample_period_s <= 0:
            raise ValueError("sample_period_s must be positive")
        self._reader = reader
        self._integrator = integrator
        self._publisher = publisher
        self._node = node
        self._period = sample_period_s
        self._clock = clock
        self._stopping = threading.Event()
        self._wait = wait or self._stopping.wait
        self._metrics = metrics
        self._spool_depth = spool_depth
        self._max_pending = max_pending_events
        self._pending: list[UsageEvent] = []
        self._checkpoint = checkpoint
        self._last_tick: float | None = None
        self.stats = RunStats()

    def stop(self) -> None:
        """Ask the loop to finish (safe from a signal handler or another thread)."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    # -- the loop -----------------------------------------------------------------------

    def run(self, *, duration_s: float | None = None, max_rounds: int | None = None) -> RunStats:
        """Sample until stopped (or for ``duration_s`` / ``max_rounds``), then flush the
        open interval and publish it. Returns what was done."""
        started = self._clock()
        deadline = None if duration_s is None else started + duration_s
        log.info("collector started", extra={"node": self._node, "sample_period_s": self._period})
        self._resume()
        try:
            while not self.stopping:
                if max_rounds is not None and self.stats.rounds >= max_rounds:
                    break
                tick = math.floor(self._clock() / self._period) * self._period + self._period
                if self._last_tick is not None:
                    tick = max(tick, self._last_tick + self._period)  # never the same tick twice
                elif max_rounds is not None:
                    tick = self._clock()  # a bounded run samples at once
                if deadline is not None and tick > deadline:
                    break
                delay = tick - self._clock()
                if delay > 0:
                    self._wait(delay)
                    if self.stopping:
                        break
                self._last_tick = tick
                self.round(tick)
        finally:
            self.finish()
        return self.stats

    def round(self, timestamp_s: float) -> list[UsageEvent]:
        """One sampling round at ``timestamp_s``; publishes and returns closed events."""
        began = time.perf_counter()
        try:
            samples = self._reader.sample(timestamp_s)
        except CollectorError as exc:
            log.error("sampling failed", extra={"error": str(exc)})
            samples = []
        if self._metrics is not None:
            self._metrics.observe_samples(samples, time.perf_counter() - began, timestamp_s)
        self.stats.rounds += 1
        self.stats.samples += len(samples)
        events = self._integrator.add(samples) if samples else self._integrator.advance(timestamp_s)
        self._publish(events)
        return events

    def _resume(self) -> None:
        """Take back the interval that was open when the agent last stopped, if any."""
        if self._checkpoint is None:
            return
        state = self._checkpoint.load()
        if state is not None:
            self._publish(self._integrator.restore(state))
            self._checkpoint.clear()
            log.info("resumed the open interval of the last run", extra={"node": self._node})

    def finish(self) -> None:
        """Graceful stop: keep the open interval, publish what closed, flush the publisher.

        With a checkpoint the open interval is saved and resumed by the next start (one
        complete event, no usage lost to dedupe); without one it is closed and published as
        a partial interval.
        """
        if self._checkpoint is not None:
            self._checkpoint.save(self._integrator.snapshot())
            events: list[UsageEvent] = []
        else:
            events = self._integrator.flush()
        self._publish(events)
        try:
            self._publisher.flush()
        except (BusUnavailable, CollectorError) as exc:
            log.error("final flush failed", extra={"error": str(exc)})
        self._observe_spool()
        log.info(
            "collector stopped",
            extra={"node": self._node, "rounds": self.stats.rounds, "events": self.stats.events_published,
                   "events_pending": len(self._pending)},
        )

    def _publish(self, events: list[UsageEvent]) -> None:
        batch = self._pending + events
        if not batch:
            self._observe_spool()
            return
        try:
            self._publisher.publish(self._node, batch)
        except (CollectorError, BusUnavailable) as exc:
            self._pending = batch[-self._max_pending :]
            dropped = len(batch) - len(self._pending)
            self.stats.events_dropped += dropped
            self.stats.events_pending = len(self._pending)
            if self._metrics is not None:
                self._metrics.publish_failures.inc()
                self._metrics.events_dropped.inc(dropped)
            log.error("publish failed; events kept in memory",
                      extra={"error": str(exc), "events_pending": len(self._pending), "events_dropped": dropped})
        else:
            self._pending = []
            self.stats.events_published += len(batch)
            self.stats.events_pending = 0
            newest = max(parse_timestamp(e.interval_end).timestamp() for e in batch)
            if self._metrics is not None:
                self._metrics.events.inc(len(batch))
                self._metrics.publish_lag.set(max(0.0, self._clock() - newest))
            log.info("published", extra={"events": len(batch), "interval_end": max(e.interval_end for e in batch)})
        self._observe_spool()

    def _observe_spool(self) -> None:
        if self._metrics is not None and self._spool_depth is not None:
            size, messages = self._spool_depth()
            self._metrics.spool_bytes.set(size)
            self._metrics.spool_messages.set(messages)


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: time (RFC 3339 UTC), level, logger, message, and every
    ``extra=`` field of the call, so log shippers can index them."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_FIELDS and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)
