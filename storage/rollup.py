"""``usage_hourly`` rolled up from ``raw``: one row per KST hour × device × owner.

The stream consumer writes only ``raw`` (and ``quarantine``). :func:`roll_up` brings
``usage_hourly`` level with ``raw``:

1. which UTC hours changed since the last roll-up: the ``add`` actions of the ``raw`` commits
   after the version recorded in ``usage_hourly``'s ``txn`` (app id :data:`ROLLUP_APP`), read
   from the Delta log, each with the ``interval_start`` min/max of its rows in its statistics
   (compaction commits change no data and are skipped; an ``add`` without them marks its whole
   KST date);
2. each changed hour is aggregated from the ``raw`` files whose statistics overlap it (only
   those are re-hashed against their commit; Polars' streaming engine) into one new file per
   hour, so memory is one hour's device-hours and an hour that did not change is neither read
   nor rewritten (a file written before this rule holds its whole date: when one of its hours
   changes, every hour it holds is rolled again, once);
3. one commit replaces the changed hours' old ``usage_hourly`` files with the new ones and
   records the ``raw`` version it reflects — atomically, so a reader sees the old roll-up or
   the new one.

An hour whose ``usage_hourly`` file is sealed by a manifest (its month was closed, then late
events arrived) keeps it byte for byte (``verify`` checks it); the new file then holds the
difference between the roll-up of ``raw`` and the sealed rows, so the hour's files still sum
to exactly what ``raw`` holds. Such an hour has two rows for the device-hours that changed.

Sums are exact and order-independent, so the same events give byte-identical files whatever
the bus, the batch sizes or the number of consumers: GPU time is integer microseconds, energy is
summed as integer millijoules (each event's ``energy_joules`` rounded to the millijoule NVML
counts in) and written back as joules. A file is named after the SHA-256 of its bytes.

Under the store's lease (:mod:`storage.lease`) the commit carries the holder's fencing token.
The seals of the periods it touches (and the newest) are read first and an unreadable one
stops the roll-up, naming it.

Cost at national scale: an hour is ~300k device-hours from ~18M raw rows; an hourly run reads
the hours written since (the last hour, and the few hours late events landed in), never the
whole date again.
"""

from __future__ import annotations

import hashlib
import json
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
    hours: int = 0  # UTC hours aggregated by this run


_Hours = frozenset[datetime] | None  # changed UTC hours of a date; None: all 24


def roll_up(store: Store, *, lease: Lease | None = None) -> RollupResult:
    """Bring ``usage_hourly`` level with ``raw`` (see the module docstring)."""
    raw = store.table("raw")
    snapshot = raw.table()
    if snapshot is None:
        return RollupResult(-1, (), 0, False)
    raw_version = snapshot.version()
    raw_stats = raw.file_ranges("interval_start")  # the same snapshot (built once per version)
    usage = store.table("usage_hourly")
    done = usage.transaction_version(ROLLUP_APP)
    if done is not None and done >= raw_version:
        return RollupResult(raw_version, (), 0, False)
    changed = _changed_hours(store, done, raw_version)
    if changed is None:  # never rolled up, or the log was cleaned up since: every hour of every date
        changed = {_date_dir(p): None for p in raw_stats}
    changed.pop("", None)
    from storage.seal import periods_of, relative_path, sealed_files

    sealed = set(sealed_files(store, periods_of(changed)))  # fails closed on a seal it needs
    existing = usage.file_ranges("hour_start")
    recorded = recorded_sha256(store, "raw")
    adds: list[NewFile] = []
    removes: list[str] = []
    rows = hours_done = 0
    for date_dir in sorted(changed):
        hours = _date_hours(date_dir)
        old = {p: r for p, r in existing.items() if p.startswith(date_dir + "/")}
        old_sealed = {p: r for p, r in old.items() if relative_path(store, store.path("usage_hourly", p)) in sealed}
        wanted = set(hours) if changed[date_dir] is None else set(changed[date_dir])
        # an unsealed file holding a changed hour is replaced: every hour it holds is rolled again
        # (files written since issue 16 hold one hour; an older file holds its whole date)
        replaced = {p for p, r in old.items() if p not in old_sealed and any(_holds(r, h) for h in wanted)}
        for p in replaced:
            wanted.update(h for h in hours if _holds(old[p], h))
        date_raw = {p: r for p, r in raw_stats.items() if p.startswith(date_dir + "/")}
        read = sorted(p for p, r in date_raw.items() if any(_overlaps(r, h) for h in wanted))
        _refuse_damaged(store, read, recorded)  # only the raw files this run reads are re-hashed
        one_pass = sum(date_raw[p][0] or 0 for p in read) <= ONE_PASS_ROWS
        new_files = _roll_hours(store, date_dir, sorted(wanted), date_raw, old_sealed, one_pass=one_pass)
        hours_done += len(wanted)
        for new_file in new_files:
            if new_file.path in replaced:
                replaced.discard(new_file.path)  # the same bytes as the live file: nothing changes
            else:
                adds.append(new_file)
                rows += new_file.rows
        removes.extend(sorted(replaced))
    txns = {ROLLUP_APP: raw_version, **(lease.fence("usage_hourly") if lease is not None else {})}
    usage.commit(adds, removes=removes, txns=txns)
    return RollupResult(raw_version, tuple(sorted(d.rsplit("=", 1)[-1] for d in changed)), rows, True, hours_done)


def _date_hours(date_dir: str) -> list[datetime]:
    """The 24 UTC hour starts of a KST date."""
    day = Date.fromisoformat(date_dir.rsplit("=", 1)[-1])
    first = datetime(day.year, day.month, day.day, tzinfo=timezone.utc) - _KST
    return [first + timedelta(hours=h) for h in range(24)]


def _holds(stats: tuple[int | None, object, object], hour: datetime) -> bool:
    """A ``usage_hourly`` file (rows, min, max of hour_start) may hold rows of ``hour``."""
    _, lo, hi = stats
    return lo is None or hi is None or (_utc(lo) <= hour <= _utc(hi))


def _overlaps(stats: tuple[int | None, object, object], hour: datetime) -> bool:
    """A raw file (rows, min, max of interval_start) may hold events of ``hour``."""
    _, lo, hi = stats
    return lo is None or hi is None or (_utc(lo) < hour + timedelta(hours=1) and _utc(hi) >= hour)


def _utc(value: object) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


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


def _roll_hours(
    store: Store, date_dir: str, hours: list[datetime], raw_stats: dict[str, tuple[int | None, object, object]],
    sealed: dict[str, tuple[int | None, object, object]], *, one_pass: bool = False,
) -> list[NewFile]:
    """One new file per hour of ``hours`` that holds usage (memory: one hour's device-hours),
    reading only the raw files whose ``interval_start`` statistics overlap that hour; for a
    small read (``one_pass``) one query whose result is split into hours. Where a sealed file
    holds the hour, the new file holds the difference (the sealed file is never replaced)."""
    out: list[NewFile] = []
    if not hours:
        return out
    files_of = {h: sorted(p for p, r in raw_stats.items() if _overlaps(r, h)) for h in hours}
    every = sorted({p for files in files_of.values() for p in files})
    whole = None
    if one_pass and every:
        in_hours = pl.col("interval_start").dt.truncate("1h").is_in(hours)
        whole = hourly_rows(store.scan_files([store.path("raw", p) for p in every], RAW_EVENTS).filter(in_hours))
        whole = whole.collect(engine="streaming")
    for start in hours:
        if whole is not None:
            frame = whole.filter(pl.col("hour_start") == start)
        elif files_of[start]:
            in_hour = (pl.col("interval_start") >= start) & (pl.col("interval_start") < start + timedelta(hours=1))
            scan = store.scan_files([store.path("raw", p) for p in files_of[start]], RAW_EVENTS)
            frame = hourly_rows(scan.filter(in_hour)).collect(engine="streaming")
        else:
            frame = None
        if frame is not None:
            _refuse_impossible(frame, date_dir)
        sealed_here = [store.path("usage_hourly", p) for p, r in sorted(sealed.items()) if _holds(r, start)]
        if sealed_here:
            held = store.scan_files(sealed_here, USAGE_HOURLY).filter(pl.col("hour_start") == start).collect()
            base = frame if frame is not None else pl.DataFrame(schema=held.schema).select(held.columns)
            frame = _minus(base, held)
        if frame is None or frame.height == 0:
            continue
        out.append(_write_hour(store, date_dir, start, frame, [*files_of[start], *sealed_here]))
    return out


def _write_hour(store: Store, date_dir: str, start: datetime, frame: pl.DataFrame, inputs: list[str]) -> NewFile:
    """Write one hour's rows as a file named after the SHA-256 of its bytes."""
    digest = hashlib.sha256("\n".join([date_dir, start.isoformat(), *inputs]).encode()).hexdigest()[:24]
    rel = posixpath.join(date_dir, f"part-rollup-tmp-{digest}.parquet")  # renamed after its bytes
    table = to_table(frame, USAGE_HOURLY)
    with store.open_new_file("usage_hourly", rel) as out, pq.ParquetWriter(out, USAGE_HOURLY, compression=PARQUET_COMPRESSION) as writer:
        writer.write_table(table)
    period, date = date_dir.split("/")[0].split("=")[1], date_dir.split("/")[1].split("=")[1]
    stats = {"period": (period, period), "date": (date, date), "hour_start": (start, start)}
    written = store.new_file_of("usage_hourly", rel, table.num_rows, stats)
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


def _changed_hours(store: Store, done: int | None, version: int) -> dict[str, _Hours] | None:
    """``period=…/date=…`` → the UTC hours whose raw rows changed in commits ``done+1..version``
    (from each data-changing ``add``'s ``interval_start`` min/max in the log; all 24 hours of
    its date for an ``add`` without them); ``None`` if a commit is no longer in the log."""
    if done is None:
        return None
    out: dict[str, set[datetime] | None] = {}
    for v in range(done + 1, version + 1):
        actions = commit_actions(store, "raw", v)
        if actions is None:  # cleaned up since: the caller rolls every date up
            return None
        for action in actions:
            add = action.get("add")
            if not add or not add.get("dataChange", True):
                continue
            date_dir = _date_dir(add["path"])
            hours = _hours_of(add.get("stats"), date_dir)
            if hours is None or out.get(date_dir, set()) is None:
                out[date_dir] = None
            else:
                out.setdefault(date_dir, set()).update(hours)  # type: ignore[union-attr]
    return {d: (None if h is None else frozenset(h)) for d, h in out.items()}


def _hours_of(stats_json: str | None, date_dir: str) -> list[datetime] | None:
    """The hours of ``date_dir`` an add's ``interval_start`` range covers (``None``: unknown)."""
    if not date_dir:
        return None
    try:
        stats = json.loads(stats_json or "{}")
        lo = _utc(stats["minValues"]["interval_start"])
        hi = _utc(stats["maxValues"]["interval_start"])
    except (KeyError, TypeError, ValueError):
        return None
    return [h for h in _date_hours(date_dir) if h < hi + timedelta(microseconds=1) and h + timedelta(hours=1) > lo]


def _date_dir(rel: str) -> str:
    """``period=2026-11/date=2026-11-03`` of a raw file path relative to the table."""
    parts = rel.split("/")
    if len(parts) >= 3 and parts[0].startswith("period=") and parts[1].startswith("date="):
        return f"{parts[0]}/{parts[1]}"
    return ""
