"""Is the stream consumer making progress? The heartbeat file it writes and the verdict
``gpuledger health`` draws from it.

``gpuledger consume`` hands :meth:`HeartbeatFile.write` to its
:class:`~streams.metrics.ConsumerMetrics` as ``on_progress``: every few seconds while the
loop runs, the file is replaced (atomically) by a JSON snapshot — when the consumer started,
when it last polled, last made progress (a batch committed, or a poll found nothing to read),
last committed, and how far behind it is per partition.

:func:`assess` calls a consumer unhealthy when

* it has made no progress for ``max_stale_s`` (stuck in a batch step, in a poll, waiting for
  an unreachable bus, or dead: a dead process stops writing, so its last beat grows old), or
* the bus says records are waiting and no batch has committed for ``max_stale_s`` (it polls,
  but the backlog is not being worked off: commits refused at every rebalance, fetches that
  return nothing).

A process that hangs cannot report itself: the verdict is drawn by another process (the
container's health check) from the age of the file's facts, with the clock passed in.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path

from storage.errors import GpuledgerError
from storage.location import Location, read_bytes, write_atomic
from streams.metrics import ConsumerProgress

log = logging.getLogger(__name__)

FORMAT = 1


class HealthError(GpuledgerError):
    """The heartbeat file is missing or unreadable."""


class HeartbeatFile:
    """A consumer's progress in a file, replaced atomically so a reader never sees half a file.

    ``location`` is a :class:`~storage.location.Location`: beside the data (default
    ``<data-dir>/consumer.heartbeat.json``, on S3 too, so ``health`` reads it from any machine
    and directory), or a local file given by ``--heartbeat-file``."""

    def __init__(self, location: Location | Path | str, pid: int | None = None,
                 s3_options: Mapping[str, str] | None = None):
        self.path = location if isinstance(location, Location) else Location.parse(location)
        self._pid = os.getpid() if pid is None else pid
        self._s3 = dict(s3_options or {})

    def write(self, progress: ConsumerProgress) -> None:
        """Replace the file. A failure is logged, never raised: the consumer keeps consuming,
        and the beat it could not write ages until the health check says so."""
        payload = {"format": FORMAT, "pid": self._pid, **dataclasses.asdict(progress)}
        if progress.lag is not None:
            payload["lag"] = {str(p): n for p, n in sorted(progress.lag.items())}
        if progress.stopped:
            payload["stopped"] = {str(p): line for p, line in sorted(progress.stopped.items())}
        try:
            write_atomic(self.path, json.dumps(payload, sort_keys=True).encode(), self._s3)
        except OSError as exc:
            log.warning("could not write the heartbeat %s: %s", self.path, exc)

    def read(self) -> ConsumerProgress:
        try:
            payload = json.loads(read_bytes(self.path, self._s3))
        except FileNotFoundError:
            raise HealthError(
                f"no heartbeat at {self.path}: the consumer has not started here "
                "(or writes elsewhere: give that file with --heartbeat-file, or GPULEDGER_CONSUMER__HEARTBEAT_FILE)"
            ) from None
        except (OSError, ValueError) as exc:
            raise HealthError(f"cannot read the heartbeat {self.path}: {exc}") from exc
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise HealthError(f"{self.path} is not a gpuledger consumer heartbeat (format {FORMAT})")
        lag = payload.get("lag")
        stopped = payload.get("stopped")
        try:
            return ConsumerProgress(
                started_s=float(payload["started_s"]),
                last_poll_s=_seconds(payload.get("last_poll_s")),
                last_progress_s=float(payload["last_progress_s"]),
                last_commit_s=_seconds(payload.get("last_commit_s")),
                batches=int(payload["batches"]),
                lag=None if lag is None else {int(p): int(n) for p, n in lag.items()},
                lag_unit=str(payload["lag_unit"]),
                stopped=None if not stopped else {int(p): str(line) for p, line in stopped.items()},
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise HealthError(f"{self.path}: malformed heartbeat ({exc!r})") from exc


def _seconds(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]


def assess(progress: ConsumerProgress, now_s: float, max_stale_s: float) -> list[str]:
    """Every reason the consumer is unhealthy at ``now_s``; ``[]`` when it is healthy."""
    problems = []
    quiet_s = now_s - progress.last_progress_s
    if quiet_s > max_stale_s:
        problems.append(
            f"no progress for {quiet_s:.0f} s (no batch committed, no empty poll; limit {max_stale_s:.0f} s)"
        )
    for partition, line in sorted((progress.stopped or {}).items()):
        problems.append(f"partition {partition} is stopped: {line}")
    behind = progress.lag_total
    since_commit_s = now_s - (progress.last_commit_s if progress.last_commit_s is not None else progress.started_s)
    if behind and since_commit_s > max_stale_s:
        problems.append(
            f"{behind:,} {progress.lag_unit} waiting and no batch committed for {since_commit_s:.0f} s "
            f"(limit {max_stale_s:.0f} s)"
        )
    return problems


def describe(progress: ConsumerProgress, now_s: float) -> str:
    """One line for an operator: what the consumer last did, how long ago."""
    def ago(at: float | None) -> str:
        return "never" if at is None else f"{now_s - at:.0f} s ago"

    behind = "unknown" if progress.lag_total is None else f"{progress.lag_total:,} {progress.lag_unit}"
    return (
        f"{progress.batches:,} batches; last progress {ago(progress.last_progress_s)}, "
        f"last commit {ago(progress.last_commit_s)}, last poll {ago(progress.last_poll_s)}; lag {behind}"
    )
