"""Bringing quarantined events back once the registry is amended (``gpuledger quarantine replay``).

A refused line is kept in ``quarantine/`` with its original text (an Arrow message refused as
a whole, as base64 of its bytes: :func:`streams.wire.payload_of_raw` gives them back). Replaying feeds those texts
through the same :class:`~streams.pipeline.BatchProcessor` as the live stream, with the
registry as it is now:

* lines that now pass land in ``raw/`` and ``usage_hourly/`` — exactly once, because the
  processor drops event ids already stored (replaying twice changes nothing);
* lines that still fail stay in quarantine as they were (their ``quarantine_id`` is known, so
  no second copy is written).

Compliance counts a quarantined event only while its ``event_id`` is absent from ``raw/``, so a
replayed event moves from "quarantined" to "reported" without anything being rewritten. Usage
of a month already closed is billed as corrections by the next close.
"""

from __future__ import annotations

import polars as pl

from storage.schemas import QUARANTINE, RAW_EVENTS

from storage.dataset import Store
from streams.pipeline import BatchProcessor, BatchResult
from streams.wire import payload_of_raw

REPLAYABLE = ("unknown_entity", "unknown_project", "project_of_other_entity")


def replay_quarantine(
    store: Store,
    processor: BatchProcessor,
    *,
    period: str | None = None,
    reasons: tuple[str, ...] = REPLAYABLE,
    batch_lines: int = 50_000,
) -> list[BatchResult]:
    """Re-process quarantined lines refused for ``reasons`` (registry problems by default)."""
    where = f"/period={period}" if period is not None else ""
    files = store.files(f"quarantine{where}")
    if not files:
        return []
    rows = store.scan_files(files, QUARANTINE).filter(pl.col("reason_code").is_in(list(reasons)))
    raw_files = store.files(f"raw{where}")  # only the period's raw: its events live there
    if raw_files:
        stored = store.scan_files(raw_files, RAW_EVENTS).select("event_id")
        rows = rows.join(stored, on="event_id", how="anti")
    lines = rows.select("source", "raw").sort("source").collect()
    results = []
    for start in range(0, lines.height, batch_lines):
        chunk = lines.slice(start, batch_lines)
        messages = [(f"replay:{source}", payload_of_raw(raw)) for source, raw in chunk.iter_rows()]
        results.append(processor.process(messages))
    return results


def with_readmitted(quarantine: pl.LazyFrame, raw: pl.LazyFrame | None) -> pl.LazyFrame:
    """The quarantine rows with a boolean ``readmitted``: a replay admitted that very line.

    Only a line refused for a registry reason (:data:`REPLAYABLE`) can be re-admitted, and its
    event is then in ``raw/`` under its ``event_id`` with the entity, project and GPU-time the
    line carried. An ``event_id`` in ``raw/`` alone proves nothing: a ``conflicting_duplicate``
    is refused *because* another event with its id is stored, before any replay.
    """
    if raw is None:
        return quarantine.with_columns(readmitted=pl.lit(False))
    stored = raw.select(
        "event_id",
        pl.col("entity").alias("_stored_entity"),
        pl.col("project").alias("_stored_project"),
        pl.col("gpu_microseconds").alias("_stored_us"),
    ).unique(subset="event_id")
    same = (
        pl.col("reason_code").is_in(list(REPLAYABLE))
        & pl.col("_stored_entity").eq_missing(pl.col("entity"))
        & pl.col("_stored_project").eq_missing(pl.col("project"))
        & pl.col("_stored_us").eq_missing(pl.col("gpu_microseconds"))
        & pl.col("_stored_us").is_not_null()
    )
    return (
        quarantine.join(stored, on="event_id", how="left")
        .with_columns(readmitted=same.fill_null(False))
        .drop("_stored_entity", "_stored_project", "_stored_us")
    )

