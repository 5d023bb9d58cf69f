"""Prometheus metrics of ``gpuledger schedule``, on their own registry (client_python naming).

A failed monthly close used to be visible only in journald. These metrics make it an alert
(``deploy/prometheus/gpuledger-alerts.yml``, group ``gpuledger-scheduler``):

* ``gpuledger_scheduler_job_runs_total{job_id}`` / ``_job_failures_total{job_id}`` (not ``job``:
  Prometheus's own target label): every run of a
  stored job (``hourly-compaction``, ``daily-compliance-snapshot``, ``monthly-close``) and of
  the catch-up close at start (counted as ``monthly-close``), as APScheduler reports it;
* ``gpuledger_scheduler_last_close_timestamp_seconds{period}``: when this process saw the
  close of ``period`` succeed (catch-up or job);
* ``gpuledger_scheduler_closed_through_month``: the newest month sealed in storage, as
  ``year × 12 + month − 1`` (so PromQL can compare it with ``year() * 12 + month() - 1``).
  Read from the manifests at every scrape: storage is the truth, not this process's memory;
* ``gpuledger_scheduler_lease_held``: 1 when the close run at start held the close lock, 0
  when another process held it (that process closes; this one only compacts and snapshots).
  A catch-up close that raises ends the process: ``up{job="gpuledger-scheduler"}`` says so.

Nothing is registered at import time: :class:`SchedulerMetrics` takes its registry.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily

from storage.dataset import Store
from storage.manifest import sealed_periods

MONTHLY_CLOSE_JOB = "monthly-close"


def month_index(period: str) -> int:
    """``YYYY-MM`` as ``year × 12 + month − 1`` (2026-11 → 24321)."""
    year, month = (int(x) for x in period.split("-"))
    return year * 12 + month - 1


class _ClosedThrough:
    """A collector that reads the newest sealed month from storage at every scrape."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "gpuledger_scheduler_closed_through_month",
            "Newest month sealed in storage, as year*12 + month - 1 (compare with year()*12 + month() - 1).",
        )
        sealed = sealed_periods(self._store)
        if sealed:
            family.add_metric([], month_index(sealed[-1]))
        yield family


class SchedulerMetrics:
    """The scheduler's metrics; ``observe_close_run`` (the catch-up) and ``job_ended`` feed them."""

    def __init__(self, registry: CollectorRegistry, store: Store, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.job_runs = Counter(
            "gpuledger_scheduler_job_runs", "Runs of a scheduled job (ended, either way).", ["job_id"], registry=registry
        )
        self.job_failures = Counter(
            "gpuledger_scheduler_job_failures", "Runs of a scheduled job that raised.", ["job_id"], registry=registry
        )
        self.last_close = Gauge(
            "gpuledger_scheduler_last_close_timestamp_seconds",
            "When this process saw the close of the period succeed.", ["period"], registry=registry,
        )
        self.lease_held = Gauge(
            "gpuledger_scheduler_lease_held", "1 if the close run at start held the close lock, 0 if another process did.",
            registry=registry,
        )
        registry.register(_ClosedThrough(store))

    def observe_close_run(self, run: Any) -> None:
        """A :class:`accounting.scheduler.CloseRun` (catch-up at start): count it, stamp what it closed."""
        self.job_runs.labels(MONTHLY_CLOSE_JOB).inc()
        self.lease_held.set(0 if run.locked_out else 1)
        self._closed(run.closed)

    def _closed(self, periods: Any) -> None:
        now_s = self._clock()
        for period in periods or ():
            self.last_close.labels(period).set(now_s)

    def job_ended(self, job_id: str, ok: bool, result: object) -> None:
        """A stored job's run ended (``accounting.scheduler.serve``'s ``on_job_end``)."""
        self.job_runs.labels(job_id).inc()
        if not ok:
            self.job_failures.labels(job_id).inc()
        elif job_id == MONTHLY_CLOSE_JOB:
            self._closed(result)
