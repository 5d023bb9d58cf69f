"""Column-wise shaping of accepted events into ``raw/`` rows (the hourly aggregation into
``usage_hourly/`` is :mod:`storage.rollup`, run over stored ``raw``).

Intervals divide the hour and are aligned (validation guarantees it), so every event lies in
exactly one UTC hour, which is also exactly one KST hour (UTC+9, no daylight saving).
``period`` and ``date`` are the KST month and date of that hour: 15:00 UTC on the last day of
a month is already the 1st of the next month in Korea.
"""

from __future__ import annotations

import polars as pl

from streams.schema import MICROSECONDS_PER_SECOND

KST_OFFSET = pl.duration(hours=9)


def _micro(column: str) -> pl.Expr:
    """Seconds (float) to integer microseconds, rounded half to even once."""
    return (pl.col(column) * MICROSECONDS_PER_SECOND).round(0, mode="half_to_even").cast(pl.Int64)


def to_raw(accepted: pl.DataFrame) -> pl.DataFrame:
    """Accepted, validated rows (with ``_interval_start``/``_interval_end``) as ``raw/`` rows."""
    kst_date = (pl.col("_interval_start") + KST_OFFSET).dt.date().cast(pl.String())  # ISO YYYY-MM-DD
    return accepted.with_columns(
        period=kst_date.str.slice(0, 7),
        date=kst_date,
        interval_start=pl.col("_interval_start"),
        interval_end=pl.col("_interval_end"),
        gpu_microseconds=_micro("gpu_seconds"),
        busy_gpu_microseconds=_micro("busy_gpu_seconds"),
        flags=pl.col("flags").fill_null([]),
    )

