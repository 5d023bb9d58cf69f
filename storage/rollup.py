"""``usage_hourly`` rolled up from ``raw``: one row per KST hour × device × owner.

The stream consumer writes only ``raw`` (and ``quarantine``). :func:`roll_up` brings
``usage_hourly`` level with ``raw``:

1. which KST dates changed since the last roll-up: the ``add`` actions of the ``raw`` commits
   after the version recorded in ``usage_hourly``'s ``txn`` (app id :data:`ROLLUP_APP`), read
   from the Delta log (compaction commits change no data and are skipped);
2. for each changed date, its ``raw`` files are aggregated one UTC hour at a time (a scan with
   the hour pushed down as a predicate; Polars' streaming engine), each hour appended as a row
   group to one new file, so memory is one hour's device-hours, never a day's events;
3. one commit replaces the date's old ``usage_hourly`` files with the new ones and records the
   ``raw`` version it reflects — atomically, so a reader sees the old roll-up or the new one.

A date whose ``usage_hourly`` files are sealed by a manifest (its month was closed, then late
events arrived) keeps them byte for byte (``verify`` checks them); the new file then holds the
difference between the roll-up of ``raw`` and the sealed rows, so the date's files still sum
to exactly what ``raw`` holds. Such a date has two rows for the device-hours that changed.

Sums are exact and order-independent, so the same events give byte-identical files whatever
the bus, the batch sizes or the number of consumers: GPU time is integer microseconds, energy is
summed as integer millijoules (each event's ``energy_joules`` rounded to the millijoule NVML
counts in) and written back as joules. A file is named after the SHA-256 of its bytes.

Under the store's lease (:mod:`storage.lease`) the commit carries the holder's fencing token.
The seals are read first and an unreadable one stops the roll-up, naming it.

Cost at national scale: a finished day is ~7.2M device-hours (300k devices × 24), ~400M raw
rows read once per roll-up of that date; hourly runs touch only the dates written since.
"""

from __future__ import annotations

import contextlib
import hashlib
import posixpath
from dataclasses import dataclass
from datetime import date as Date
from typing import TYPE_CHECKING
from datetime import datetime, timedelta, timezone

import polars as pl
import pyarrow.parquet as pq

from storage.dataset import PARQUET_COMPRESSION, Store, to_table
from storage.delta import NewFile
from storage.deltalog import commit_actions, damaged_files, recorded_sha256
from storage.errors import StorageError
from storage.schemas import RAW_EVENTS, USAGE_HOURLY

if TYPE_CHECKING:
    from storage.lease import Lease

ROLLUP_APP = "gpuledger/rollup"
# a date with at most this many raw rows is aggregated in one query (its result, a few hundred
# thousand device-hours at most, is held at once); a bigger one hour by hour
ONE_PASS_ROWS = 2_000_000
HOURLY_KEYS = [
    "period", "date", "hour_start", "site", "node", "entity", "project", "job_id",
    "gpu_uuid", "device_uuid", "gpu_model", "mig_profile", "gpu_fraction",
]
_SUMS = [
    "gpu_microseconds", "busy_gpu_microseconds", "energy_joules", "events", "partial_events",
    "samples", "expected_samples",
]
_KST = timedelta(hours=9)


def hourly_rows(raw: pl.LazyFrame) -> pl.LazyFrame:
    """Raw rows summed per KST hour × device × owner (``usage_hourly`` rows), sorted."""
    partial = pl.col("flags").list.contains("partial_interval").cast(pl.Int64)
    return (
        raw.with_columns(hour_start=pl.col("interval_start").dt.truncate("1h"))
        .group_by(HOURLY_KEYS)
        .agg(
            gpu_microseconds=pl.col("gpu_microseconds").sum(),
            busy_gpu_microseconds=pl.col("busy_gpu_microseconds").sum(),
            energy_joules=pl.when(pl.col("energy_joules").is_not_null().any())
            .then(_millijoules(pl.col("energy_joules")).sum().cast(pl.Float64) / 1000),
            events=pl.len().cast(pl.Int64),
            partial_events=partial.sum(),
            samples=pl.col("samples").sum().cast(pl.Int64),
            expected_samples=pl.col("expected_samples").sum().cast(pl.Int64),
        )
        .sort(HOURLY_KEYS, nulls_last=True)
    )


def _millijoules(joules: pl.Expr) -> pl.Expr:
    """Energy as integer millijoules: sums of these are exact in any order (floats are not)."""
    return (joules * 1000).round(0).cast(pl.Int64)


@dataclass(frozen=True, slots=True)
class RollupResult:
    raw_version: int
    dates: tuple[str, ...]
    rows: int
    committed: bool


def roll_up(store: Store, *, lease: Lease | None = None) -> RollupResult:
    """Bring ``usage_hourly`` level with ``raw`` (see the module docstring)."""
    raw = store.table("raw")
    snapshot = raw.table()
    if snapshot is None:
        return RollupResult(-1, (), 0, False)
    raw_version = snapshot.version()
    actions = snapshot.get_add_actions(flatten=True)
    rows_of = dict(zip((str(p) for p in actions.column("path").to_pylist()),
                       actions.column("num_records").to_pylist(), strict=True))
    raw_files = sorted(rows_of)
    usage = store.table("usage_hourly")
    done = usage.transaction_version(ROLLUP_APP)
    if done is not None and done >= raw_version:
        return RollupResult(raw_version, (), 0, False)
    changed = _changed_dates(store, done, raw_version)
    if changed is None:  # never rolled up, or the log was cleaned up since: every date
        changed = {_date_dir(p) for p in raw_files}
    from storage.seal import relative_path, sealed_files

    sealed = set(sealed_files(store))
    existing = usage.files()
    recorded = recorded_sha256(store, "raw")
    adds: list[NewFile] = []
    removes: list[str] = []
    rows = 0
    for date_dir in sorted(d for d in changed if d):
        date_files = [p for p in raw_files if p.startswith(date_dir + "/")]
        _refuse_damaged(store, date_files, recorded)
        inputs = [store.path("raw", p) for p in date_files]
        old = [p for p in existing if p.startswith(date_dir + "/")]
        old_sealed = [store.path("usage_hourly", p) for p in old if relative_path(store, store.path("usage_hourly", p)) in sealed]
        removes.extend(p for p in old if store.path("usage_hourly", p) not in old_sealed)
        date_rows = sum(rows_of.get(p) or 0 for p in date_files)
        new_file = _roll_date(store, date_dir, inputs, old_sealed, raw_version, one_pass=date_rows <= ONE_PASS_ROWS)
        if new_file is not None and new_file.path in removes:
            removes.remove(new_file.path)  # the same bytes as the live file: nothing changes
        elif new_file is not None:
            adds.append(new_file)
            rows += new_file.rows
    txns = {ROLLUP_APP: raw_version, **(lease.fence("usage_hourly") if lease is not None else {})}
    usage.commit(adds, removes=removes, txns=txns)
    return RollupResult(raw_version, tuple(sorted(d.rsplit("=", 1)[-1] for d in changed if d)), rows, True)


def _refuse_damaged(store: Store, rel_paths: list[str], recorded: dict[str, str | None]) -> None:
    """Raw files are re-hashed before their day is rolled up: a file changed since its commit
    (a flipped bit, a truncation) must never become usage that is then sealed and billed."""
    damaged = damaged_files(store, "raw", rel_paths, recorded)
    if damaged:
        raise StorageError(
            f"damaged raw file(s), not rolled up: {'; '.join(damaged)}. Restore them from a backup "
            "(or re-consume their messages into a fresh data directory); `gpuledger verify --all` lists every damaged file"
        )


def rolled_up(store: Store) -> Store:
    """``store`` after :func:`roll_up` (for readers that want ``usage_hourly`` current)."""
    roll_up(store)
    return store


def _roll_date(
    store: Store, date_dir: str, inputs: list[str], sealed: list[str], raw_version: int, *, one_pass: bool = False
) -> NewFile | None:
    """Roll one KST date up into one new file: hour by hour (memory: one hour's device-hours),
    or, for a small day (``one_pass``), in one query whose result is split into hours."""
    day = Date.fromisoformat(date_dir.rsplit("=", 1)[-1])
    first_hour = datetime(day.year, day.month, day.day, tzinfo=timezone.utc) - _KST
    digest = hashlib.sha256(("\n".join([date_dir, *inputs, *sealed])).encode()).hexdigest()[:24]
    rel = posixpath.join(date_dir, f"part-rollup-tmp-{digest}.parquet")  # renamed after its bytes
    raw_scan = store.scan_files(inputs, RAW_EVENTS)
    sealed_scan = store.scan_files(sealed, USAGE_HOURLY) if sealed else None
    rows = 0
    lo: datetime | None = None
    hi: datetime | None = None
    with contextlib.ExitStack() as stack:
        writer = None
        whole_day = hourly_rows(raw_scan).collect(engine="streaming") if one_pass else None
        for h in range(24):
            start = first_hour + timedelta(hours=h)
            if whole_day is not None:
                frame = whole_day.filter(pl.col("hour_start") == start)
            else:
                in_hour = (pl.col("interval_start") >= start) & (pl.col("interval_start") < start + timedelta(hours=1))
                frame = hourly_rows(raw_scan.filter(in_hour)).collect(engine="streaming")
            _refuse_impossible(frame, date_dir)
            if sealed_scan is not None:
                frame = _minus(frame, sealed_scan.filter(pl.col("hour_start") == start).collect())
            if frame.height == 0:
                continue
            if writer is None:
                out = stack.enter_context(store.open_new_file("usage_hourly", rel))
                writer = stack.enter_context(pq.ParquetWriter(out, USAGE_HOURLY, compression=PARQUET_COMPRESSION))
            table = to_table(frame, USAGE_HOURLY)
            writer.write_table(table)
            rows += table.num_rows
            lo = lo or start
            hi = start
    if rows == 0:
        return None
    period, date = date_dir.split("/")[0].split("=")[1], date_dir.split("/")[1].split("=")[1]
    stats = {"period": (period, period), "date": (date, date), "hour_start": (lo, hi)}
    written = store.new_file_of("usage_hourly", rel, rows, stats)
    final = posixpath.join(date_dir, f"part-rollup-{written.sha256[:24]}.parquet")
    fs = store._fs  # noqa: SLF001 - same package; the file is not committed yet, so no reader sees it
    if store.exists(store.path("usage_hourly", final)):
        fs.delete_file(store.path("usage_hourly", rel))  # same name, same bytes: already there
    else:
        fs.move(store.path("usage_hourly", rel), store.path("usage_hourly", final))
    return NewFile(final, written.size_bytes, written.rows, written.sha256, written.stats)


def _refuse_impossible(frame: pl.DataFrame, date_dir: str) -> None:
    """A device-hour holds at most an hour of GPU time and never less than none."""
    bad = frame.filter(
        (pl.col("gpu_microseconds") < 0)
        | (pl.col("gpu_microseconds") > 3_600_000_000)
        | (pl.col("busy_gpu_microseconds") < 0)
        | (pl.col("busy_gpu_microseconds") > pl.col("gpu_microseconds"))
    )
    if bad.height:
        row = bad.row(0, named=True)
        raise StorageError(
            f"impossible usage in raw/{date_dir}: {bad.height} device-hour(s), e.g. {row['device_uuid']} at "
            f"{row['hour_start']}: {row['gpu_microseconds']} GPU-µs, {row['busy_gpu_microseconds']} busy; "
            "a raw file was altered after validation: `gpuledger verify --all` names it"
        )


def _minus(full: pl.DataFrame, sealed: pl.DataFrame) -> pl.DataFrame:
    """``full`` − ``sealed`` per key: rows whose sums changed, holding the difference."""
    if sealed.height == 0:
        return full
    exact = [c for c in _SUMS if c != "energy_joules"]
    sealed_sums = sealed.group_by(HOURLY_KEYS).agg(
        [*(pl.col(c).sum().alias(f"_s_{c}") for c in exact),
         _millijoules(pl.col("energy_joules")).sum().alias("_s_energy_mj")]
    )
    joined = full.join(sealed_sums, on=HOURLY_KEYS, how="full", coalesce=True, nulls_equal=True)
    diffs = [
        *((pl.col(c).fill_null(0) - pl.col(f"_s_{c}").fill_null(0)).alias(c) for c in exact),
        ((_millijoules(pl.col("energy_joules")).fill_null(0) - pl.col("_s_energy_mj").fill_null(0)).cast(pl.Float64)
         / 1000).alias("energy_joules"),
    ]
    out = joined.select([*HOURLY_KEYS, *diffs]).select([*HOURLY_KEYS, *_SUMS])
    changed = pl.any_horizontal([pl.col(c) != 0 for c in _SUMS if c != "energy_joules"])
    out = out.filter(changed)
    if (out["gpu_microseconds"] < 0).any():
        raise StorageError("raw holds less usage than a sealed usage_hourly file; raw was altered")
    return out.sort(HOURLY_KEYS, nulls_last=True)


def _changed_dates(store: Store, done: int | None, version: int) -> set[str] | None:
    """``period=…/date=…`` of every data-changing ``add`` in raw commits ``done+1..version``."""
    if done is None:
        return None
    dates: set[str] = set()
    for v in range(done + 1, version + 1):
        actions = commit_actions(store, "raw", v)
        if actions is None:  # cleaned up since: the caller rolls every date up
            return None
        for action in actions:
            add = action.get("add")
            if add and add.get("dataChange", True):
                dates.add(_date_dir(add["path"]))
    return dates


def _date_dir(rel: str) -> str:
    """``period=2026-11/date=2026-11-03`` of a raw file path relative to the table."""
    parts = rel.split("/")
    if len(parts) >= 3 and parts[0].startswith("period=") and parts[1].startswith("date="):
        return f"{parts[0]}/{parts[1]}"
    return ""
