"""Reading the consumer's datasets for a close: the one place accounting runs Polars over them.

Everything here is lazy and streaming and returns *small* frames (per hour × owner, per
GPU-hour that breaks the wall-clock rule, per quarantine reason), so a month of 260,000 GPUs
(~187M ``usage_hourly`` rows) closes in bounded memory. The close works from these frames;
billing and compliance then only do exact decimal arithmetic on a few thousand rows.

Months are KST calendar months. KST is UTC+9 with no daylight saving, so a KST month is the
UTC interval ``[first day 00:00 KST, next month's first day 00:00 KST)``, i.e. it begins at
15:00 UTC on the last day of the previous month.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import numpy as np
import polars as pl

from accounting.errors import CloseError
from accounting.wallclock import MICROSECONDS_PER_HOUR, OVER_SCHEMA, OWNER_SCHEMA, cap_gpu_hours
from storage.dataset import Store
from storage.schemas import QUARANTINE, RAW_EVENTS, USAGE_HOURLY

KST_OFFSET = timedelta(hours=9)
UNATTRIBUTED = "unattributed"
_PERIOD = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")
_PERIOD_DIR = re.compile(r"/period=(\d{4}-\d{2})/")

# Per-hour usage of one owner: the grain the close works at (small: hours × owners).
HOURLY_OWNER_KEYS = ["hour_start", "entity", "project", "gpu_model"]


@dataclass(frozen=True, slots=True)
class Month:
    """A KST calendar month."""

    period: str
    first_day: date
    last_day: date

    @property
    def days(self) -> int:
        return (self.last_day - self.first_day).days + 1

    @property
    def hours(self) -> int:
        return self.days * 24

    @property
    def start_utc(self) -> datetime:
        return datetime.combine(self.first_day, datetime.min.time(), UTC) - KST_OFFSET

    @property
    def end_utc(self) -> datetime:
        return datetime.combine(self.last_day + timedelta(days=1), datetime.min.time(), UTC) - KST_OFFSET


def parse_month(period: str) -> Month:
    match = _PERIOD.match(period)
    if not match:
        raise CloseError(f"bad month {period!r}: expected YYYY-MM (a KST calendar month)")
    year, month = int(match[1]), int(match[2])
    first = date(year, month, 1)
    nxt = date(year + (month == 12), month % 12 + 1, 1)
    return Month(period, first, nxt - timedelta(days=1))


def kst_period_of(moment: datetime) -> str:
    """The KST month an aware instant falls in (15:00 UTC on the 31st is the 1st in Seoul)."""
    if moment.tzinfo is None:
        raise CloseError("naive datetime: pass an aware instant")
    return (moment.astimezone(UTC) + KST_OFFSET).strftime("%Y-%m")


def usage_periods(store: Store, files: list[str] | None = None) -> list[str]:
    """Periods that hold any committed ``usage_hourly`` file, sorted (from the Hive paths).

    ``files`` is a listing already taken (``store.files("usage_hourly")``), to reuse it.
    """
    found = set()
    for path in store.files("usage_hourly") if files is None else files:
        match = _PERIOD_DIR.search(path)
        if match:
            found.add(match[1])
    return sorted(found)


def period_files(store: Store, dataset: str, period: str) -> list[str]:
    """Files of ``<dataset>/period=<period>/`` only (a prefix listing, not the history)."""
    return store.files(f"{dataset}/period={period}")


def hourly_by_owner(usage: pl.LazyFrame) -> pl.LazyFrame:
    """Usage summed per UTC hour × entity × project × GPU model (exact integer sums).

    ``usage_hourly`` may hold several rows for one hour and device (one per consumer batch),
    and MIG instances are separate devices whose ``gpu_microseconds`` already carry their
    ``gpu_fraction``: a plain sum is the right answer for both.
    """
    return usage.group_by(HOURLY_OWNER_KEYS).agg(
        gpu_microseconds=pl.col("gpu_microseconds").sum(),
        busy_gpu_microseconds=pl.col("busy_gpu_microseconds").sum(),
    )


def shared_gpu_hours(usage: pl.LazyFrame) -> pl.LazyFrame:
    """GPU-hours that may hold more GPU-time than the wall clock (``gpu_uuid``, ``hour_start``).

    One device's events of one interval share an event id, so only a GPU-hour with more than
    one device (MIG instances, a whole GPU beside its own slice, one GPU reported by two
    nodes) or more than an hour of usage can break invariant 2.
    """
    per_gpu_hour = usage.group_by(["gpu_uuid", "hour_start"]).agg(
        devices=pl.struct("node", "device_uuid").n_unique(),
        gpu_microseconds=pl.col("gpu_microseconds").sum(),
        events=pl.col("events").sum(),
    )
    return per_gpu_hour.filter(
        (pl.col("devices") > 1) | (pl.col("gpu_microseconds") > MICROSECONDS_PER_HOUR + pl.col("events"))
    ).select("gpu_uuid", "hour_start")


_SCREEN_SEED = 20261206


def gpu_hours_screen(usage: pl.LazyFrame) -> pl.Series:
    """64-bit hashes of (``gpu_uuid``, ``hour_start``) that :func:`shared_gpu_hours` must look
    at: a GPU-hour with more than one row, or more GPU-time than an hour (plus one µs per
    event). A superset, never fewer: a GPU-hour with two devices has two rows, and two GPU-hours
    sharing a hash only add rows and time to one group, so no breach is screened out; what
    the screen lets through is checked on exact keys.

    Computed without a group-by, in bounded memory: one streaming pass keeps 8 bytes per row
    (the hash) and the hashes of the rows that alone hold more than an hour; the hashes are then
    sorted and those seen twice or more kept. That is the same set as grouping on the hash and
    keeping groups with ``rows > 1`` or ``sum(gpu_microseconds) > hour + sum(events)`` (a group
    of one row sums to that row; nulls count as 0, as a sum does), at a few percent of the
    memory of a hash table of every GPU-hour of a day."""
    alone_over = pl.col("gpu_microseconds").fill_null(0) > MICROSECONDS_PER_HOUR + pl.col("events").fill_null(0)
    rows = usage.select(_gpu_hour_hash(), _over=alone_over).collect(engine="streaming")
    over = rows.get_column("_gpu_hour").filter(rows.get_column("_over")).to_numpy()
    hashes = rows.get_column("_gpu_hour").to_numpy(writable=True)  # one copy, sorted in place
    del rows
    hashes.sort()
    repeated = hashes[1:][hashes[1:] == hashes[:-1]]
    del hashes
    return pl.Series("_gpu_hour", np.unique(np.concatenate([repeated, over])), dtype=pl.UInt64)


_PREFETCH = "POLARS_ROW_GROUP_PREFETCH_SIZE"


@contextmanager
def _one_row_group_ahead() -> Iterator[None]:
    """Polars' Parquet source decodes many row groups ahead of a streaming query by default,
    so a day of 6M rows was held decoded at once (678 MiB for the sums of one national day);
    one row group ahead bounds the scan by a row group (~1M rows) at no cost in CPU on local
    disk (measured, docs/BENCHMARKS.md "Monthly close"). Polars takes the setting when a scan
    is planned, so it is set around a day's scans and removed after; an operator's own
    setting is left alone."""
    if _PREFETCH in os.environ:
        yield
        return
    os.environ[_PREFETCH] = "1"
    try:
        yield
    finally:
        os.environ.pop(_PREFETCH, None)


def _gpu_hour_hash() -> pl.Expr:
    return pl.struct("gpu_uuid", "hour_start").hash(seed=_SCREEN_SEED).alias("_gpu_hour")


_DAY_COLUMNS = (
    "hour_start", "entity", "project", "gpu_model", "gpu_uuid", "node", "device_uuid",
    "gpu_microseconds", "busy_gpu_microseconds", "events",
)


def _capped_day(store: Store, period: str, day: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """One KST day: usage by owner with over-reported GPU time taken off, and the breaches.

    See :mod:`accounting.wallclock` for the rule. Only the day's candidate GPU-hours are
    re-read, from ``usage_hourly`` and ``raw``.
    """
    with _one_row_group_ahead():
        return _capped_day_scans(store, period, day)


def _capped_day_scans(store: Store, period: str, day: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    lazy = store.scan(f"usage_hourly/period={period}/date={day}", USAGE_HOURLY).select(*_DAY_COLUMNS)
    # Two streaming passes over the day's file (each reads only its own columns), so memory is
    # bounded by the file's row groups, not by the day: the sums by owner, then the screen.
    by_owner = hourly_by_owner(lazy).collect(engine="streaming")
    screened = gpu_hours_screen(lazy)
    if screened.len() == 0:
        return by_owner, _concat_over([])
    on_screen = lazy.with_columns(_gpu_hour_hash()).join(screened.to_frame().lazy(), on="_gpu_hour", how="semi").drop("_gpu_hour")
    candidates = shared_gpu_hours(on_screen).collect(engine="streaming")
    if candidates.height == 0:
        return by_owner, _concat_over([])
    keys = ["gpu_uuid", "hour_start"]
    suspects = (
        lazy.join(candidates.lazy(), on=keys, how="semi")
        .group_by([*keys, "entity", "project", "gpu_model"])
        .agg(pl.col("gpu_microseconds").sum(), pl.col("busy_gpu_microseconds").sum(), pl.col("events").sum())
    )
    events = (
        store.scan(f"raw/period={period}/date={day}", RAW_EVENTS)
        .select("event_id", "gpu_uuid", "interval_start", "interval_end", "entity", "project", "gpu_model",
                "gpu_microseconds", "busy_gpu_microseconds")
        .with_columns(hour_start=pl.col("interval_start").dt.truncate("1h"))
        .join(candidates.lazy(), on=keys, how="semi")
    )
    # Only the rows of intervals and GPU-hours over the wall clock (with the rounding slack of
    # one µs per event) go on to the exact, row-by-row sharing: usually none.
    interval = ["gpu_uuid", "interval_start"]
    over_intervals = (
        events.group_by(interval)
        .agg(
            total=pl.col("gpu_microseconds").sum(),
            wall=(pl.col("interval_end").max() - pl.col("interval_start").first()).dt.total_microseconds(),
            n=pl.len(),
        )
        .filter(pl.col("total") > pl.col("wall") + pl.col("n"))
    )
    bad_events = events.join(over_intervals, on=interval, how="semi")
    over_hours = (
        suspects.group_by(keys)
        .agg(total=pl.col("gpu_microseconds").sum(), n=pl.col("events").sum())
        .filter(pl.col("total") > MICROSECONDS_PER_HOUR + pl.col("n"))
        .select(keys)
    )
    bad_events_frame, over_hours_frame = pl.collect_all([bad_events, over_hours])
    if bad_events_frame.height == 0 and over_hours_frame.height == 0:
        return by_owner, _concat_over([])
    to_fix = pl.concat([over_hours_frame, bad_events_frame.select(keys)]).unique()
    suspects_frame = suspects.join(to_fix.lazy(), on=keys, how="semi").collect()
    events_frame = bad_events_frame
    excess, over = cap_gpu_hours(suspects_frame, events_frame)
    if excess.height:
        taken = excess.rename({"gpu_microseconds": "_cut", "busy_gpu_microseconds": "_cut_busy"})
        by_owner = (
            by_owner.join(taken, on=HOURLY_OWNER_KEYS, how="left")
            .with_columns(
                gpu_microseconds=pl.col("gpu_microseconds") - pl.col("_cut").fill_null(0),
                busy_gpu_microseconds=pl.col("busy_gpu_microseconds") - pl.col("_cut_busy").fill_null(0),
            )
            .drop("_cut", "_cut_busy")
        )
    return by_owner, over


def scan_month(store: Store, period: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """One pass over a month: (hourly by owner, within the wall clock; oversubscribed GPU-hours).

    The month is read one KST day partition at a time, and each day in two streaming passes
    that hold one Parquet row group of their columns at a time; what grows with a day is the
    screen's 8 bytes per row (~50 MB for a national day of 6.24M rows). Over-reported GPU time
    is taken off before anything is priced or counted (:mod:`accounting.wallclock`).
    """
    owners: list[pl.DataFrame] = []
    over: list[pl.DataFrame] = []
    for day in _days(store, period):
        by_owner, breaches = _capped_day(store, period, day)
        owners.append(by_owner)
        over.append(breaches)
    return _concat_owner(owners), _concat_over(over)


def scan_earlier(store: Store, periods: list[str]) -> pl.DataFrame:
    """Hourly-by-owner usage of earlier periods (for corrections), capped as :func:`scan_month`
    caps it, so a restatement never bills time the first close took off."""
    frames = []
    for period in periods:
        frames.extend(_capped_day(store, period, day)[0] for day in _days(store, period))
    return _concat_owner(frames)


def _days(store: Store, period: str) -> list[str]:
    return sorted({_day_dir(p) for p in period_files(store, "usage_hourly", period)})


def quarantined(store: Store, period: str) -> pl.DataFrame:
    """Quarantined GPU-time of ``period`` per entity × GPU model × reason.

    A refused event whose ``event_id`` is in ``raw/`` has been replayed (the registry was
    amended) and is billed from ``usage_hourly`` now, so it no longer counts as quarantined.
    A line re-sent several times is counted once (by ``event_id``, else by ``quarantine_id``).
    """
    files = period_files(store, "quarantine", period)
    if not files:
        return _empty_quarantine()
    # only the columns counted: the refused lines' text (most of the bytes) is read only for
    # lines without a quarantine_id (files written before it existed: the text is their identity)
    scan = store.scan(f"quarantine/period={period}", QUARANTINE)
    counted = ["event_id", "quarantine_id", "entity", "gpu_model", "gpu_microseconds", "reason_code"]
    rows = scan.filter(pl.col("quarantine_id").is_not_null()).select(*counted, raw=pl.lit(None, pl.String)).collect()
    if rows.height < scan.select(pl.len()).collect().item():
        rows = pl.concat([rows, scan.filter(pl.col("quarantine_id").is_null()).select(*counted, "raw").collect()])
    if rows.height == 0:
        return _empty_quarantine()
    ids = rows.get_column("event_id").drop_nulls().unique().to_list()
    replayed: list[str] = []
    if ids:
        replayed = (
            store.scan(f"raw/period={period}", RAW_EVENTS)
            .filter(pl.col("event_id").is_in(ids))
            .select("event_id")
            .unique()
            .collect()
            .get_column("event_id")
            .to_list()
        )
    identity = pl.coalesce(
        pl.col("event_id"),
        pl.col("quarantine_id") if "quarantine_id" in rows.columns else pl.col("raw"),
    )
    kept = (
        rows.filter(pl.col("event_id").is_null() | ~pl.col("event_id").is_in(replayed))
        .with_columns(_identity=identity)
        .sort(["_identity", "reason_code"])
        .unique(subset="_identity", keep="first", maintain_order=True)
    )
    return (
        kept.with_columns(
            entity=pl.col("entity").fill_null("unknown"),
            gpu_model=pl.col("gpu_model").fill_null("unknown"),
            gpu_microseconds=pl.col("gpu_microseconds").fill_null(0),
        )
        .group_by(["entity", "gpu_model", "reason_code"])
        .agg(gpu_microseconds=pl.col("gpu_microseconds").sum(), events=pl.len())
        .sort(["entity", "gpu_model", "reason_code"])
    )


def with_kst_calendar(frame: pl.DataFrame) -> pl.DataFrame:
    """Add ``period`` and ``date`` (KST) of ``hour_start`` to a by-owner frame."""
    kst = pl.col("hour_start") + pl.duration(hours=9)
    return frame.with_columns(period=kst.dt.strftime("%Y-%m"), date=kst.dt.date())


def _day_dir(path: str) -> str:
    match = re.search(r"/date=([^/]+)/", path)
    if not match:
        raise CloseError(f"usage file outside a date partition: {path}")
    return match[1]


_OWNER_SCHEMA = OWNER_SCHEMA  # per hour × owner: what wallclock takes off has the same shape


def _concat_owner(frames: list[pl.DataFrame]) -> pl.DataFrame:
    if not frames:
        return pl.DataFrame(schema=_OWNER_SCHEMA)
    combined = pl.concat([f.select(list(_OWNER_SCHEMA)).cast(_OWNER_SCHEMA) for f in frames])
    return hourly_by_owner(combined.lazy()).collect().sort(HOURLY_OWNER_KEYS)


def _concat_over(frames: list[pl.DataFrame]) -> pl.DataFrame:
    if not frames:
        return pl.DataFrame(schema=OVER_SCHEMA)
    combined = pl.concat([f.cast(OVER_SCHEMA) for f in frames])
    return (
        combined.group_by(["entity", "gpu_model"])
        .agg(pl.col("oversubscribed_gpu_hours").sum())
        .sort(["entity", "gpu_model"])
    )


def _empty_quarantine() -> pl.DataFrame:
    return pl.DataFrame(
        schema={
            "entity": pl.String,
            "gpu_model": pl.String,
            "reason_code": pl.String,
            "gpu_microseconds": pl.Int64,
            "events": pl.UInt32,
        }
    )
