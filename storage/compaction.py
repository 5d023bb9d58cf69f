"""Merge the small files of a table partition into one, streaming, as one Delta commit.

The stream consumer commits one file per partition per micro-batch, so a day of ``raw`` or a
month of ``quarantine`` grows thousands of small files and scans slow down. :func:`compact`
merges the files of one leaf partition (``period=…/date=…`` of ``raw``, ``period=…`` of
``quarantine``) into one file: it copies row groups one at a time (``pyarrow``'s streaming
reader into a ``ParquetWriter``: memory is one row group, never the partition), then one Delta
commit adds the merged file and removes the inputs (``dataChange=false``). The commit is the
only point where anything becomes visible, so a crash at any moment leaves either the old files
or the merged one listed, never both, never neither; appends by consumers running at the same
time do not conflict with it, and a concurrent compaction of the same files makes one of the
two commits fail harmlessly (:class:`~storage.delta.CommitConflict`).

What the hourly upkeep compacts (:func:`compact_dataset` with ``before_date``, today's KST
date), so that a day of ``raw`` is written about once (issue 16):

- a closed ``raw`` day: the small files (under half of ``target_bytes``) the consumer wrote are
  packed, in name order, into merged files of at most ``target_bytes`` (128 MiB), once, when
  the day closes. A merged file is never an input again: events landing late are packed among
  themselves (so a late row is copied at most twice, every other row once);
- a closed ``quarantine`` month: every small file, merged ones included, is packed by target
  size (a file at least half the target is never copied again);
- today's ``raw`` partition is left alone: the consumer keeps appending small files, readers
  prune them by their ``interval_start`` statistics, and nothing is copied hour after hour
  (merging it each hour copied 300, 600, … 1,800 rows for 300 new rows an hour);
- this month's ``quarantine`` partition: only files no compaction wrote are merged, so a
  refused line is copied at most twice (once within the hour, once when the month closes).

delta-rs ``optimize.compact`` does the same packing but keeps neither the SHA-256 of each
file in the commit (:mod:`storage.deltalog`) nor the lease's fencing token, so it is measured
against (``bench/bench_upkeep.py``), not used.

Invariants:

- rows are copied, never changed: the merged file holds the inputs' rows in file-name order
  under the declared schema (row counts checked before the commit);
- a file sealed by a period's manifest is never replaced (late files beside it are merged
  among themselves);
- the merged file's name derives from the names of its inputs, so a retry writes the same name.

- the merged file's ``add`` keeps the ``interval_start`` min/max of its rows in the log, so
  readers that prune by event time (dedupe, the roll-up) still skip it.

Removed files stay on disk until :func:`vacuum` deletes them, once no reader can still hold a
version that lists them (``retention_hours``) — and never a file any manifest seals or lists as
read, whatever the log says.

All three run under the store's lease (:mod:`storage.lease`) when the scheduler or the CLI
runs them: each commit then carries the holder's fencing token. They read the seals of the
periods they touch (and the newest) first and stop, naming the manifest, if one is unreadable
(:class:`~storage.seal.SealUnreadable`).
"""

from __future__ import annotations

import hashlib
import posixpath
from dataclasses import dataclass
from datetime import date as Date
from datetime import timedelta
from typing import TYPE_CHECKING

import pyarrow.compute as pc
import pyarrow.parquet as pq

from storage.dataset import PARQUET_COMPRESSION, Store
from storage.delta import CommitConflict
from storage.deltalog import commit_actions
from storage.errors import StorageError
from storage.seal import periods_of, relative_path, sealed_files
from storage.schemas import TABLES

if TYPE_CHECKING:
    from storage.lease import Lease
_TIME_STATS = ("interval_start", "hour_start")  # event-time columns whose min/max the log keeps

COMPACTABLE = ("raw", "quarantine")  # what the hourly job compacts (usage_hourly is rolled up)
TARGET_FILE_BYTES = 128 * 1024 * 1024  # a merged file holds at most this (files ≥ half of it stay)
_MERGED_PREFIX = "part-compact-"
COMPACTION_APP = "gpuledger/compaction"  # txn: the table version the hourly compaction looked up to


@dataclass(frozen=True, slots=True)
class CompactionResult:
    dataset: str
    partition: str
    files_in: int
    rows: int
    merged: str | None  # path of the merged file relative to the root, None if nothing done


def compact(
    store: Store, dataset: str, partition: str, *, min_files: int = 2, sealed: set[str] | None = None,
    listing: list[str] | None = None, lease: Lease | None = None,
) -> CompactionResult:
    """Merge the unsealed files of ``<dataset>/<partition>`` into one file (one commit)."""
    if dataset not in TABLES:
        raise StorageError(f"only the tables {', '.join(TABLES)} are compacted, not {dataset!r}")
    schema, partition_columns = TABLES[dataset]
    fragments = partition.strip("/").split("/")
    if tuple(f.split("=", 1)[0] for f in fragments) != partition_columns or any("=" not in f for f in fragments):
        raise StorageError(
            f"{dataset} partitions are {'/'.join(c + '=…' for c in partition_columns)}, got {partition!r}"
        )
    sealed = set(sealed_files(store, periods_of([partition]))) if sealed is None else sealed
    prefix = partition.strip("/") + "/"
    inputs = [
        p for p in (store.table(dataset).files() if listing is None else listing)
        if p.startswith(prefix) and "/" not in p[len(prefix):]
        and relative_path(store, store.path(dataset, p)) not in sealed
    ]
    if len(inputs) < min_files:
        return CompactionResult(dataset, partition, len(inputs), 0, None)
    return _merge(store, dataset, partition, inputs, lease)


def _merge(store: Store, dataset: str, partition: str, inputs: list[str], lease: Lease | None) -> CompactionResult:
    """Copy ``inputs`` (files of one partition) into one new file, committed in their place."""
    schema, _ = TABLES[dataset]
    name = _MERGED_PREFIX[len("part-"):] + hashlib.sha256("\n".join(inputs).encode()).hexdigest()[:24]
    rel = posixpath.join(partition.strip("/"), f"part-{name}.parquet")
    rows_in = rows_out = 0
    bounds: dict[str, list[object]] = {c: [] for c in _TIME_STATS if c in schema.names}
    with store.open_new_file(dataset, rel) as out, pq.ParquetWriter(out, schema, compression=PARQUET_COMPRESSION) as writer:
        for path in inputs:
            with store._fs.open_input_file(store.path(dataset, path)) as handle:  # noqa: SLF001
                parquet = pq.ParquetFile(handle)
                rows_in += parquet.metadata.num_rows
                for group in range(parquet.num_row_groups):
                    table = parquet.read_row_group(group).select(schema.names).cast(schema)
                    writer.write_table(table)
                    rows_out += table.num_rows
                    for column, seen in bounds.items():
                        if table.num_rows:
                            mm = pc.min_max(table.column(column))
                            seen.extend(v for v in (mm["min"].as_py(), mm["max"].as_py()) if v is not None)
    if rows_out != rows_in:
        raise StorageError(f"compaction of {dataset}/{partition} copied {rows_out} of {rows_in} rows")
    stats = _partition_stats(partition)
    stats.update({column: (min(seen), max(seen)) for column, seen in bounds.items() if seen})
    merged = store.new_file_of(dataset, rel, rows_out, stats)
    txns = lease.fence(dataset) if lease is not None else None
    try:
        store.commit_files(dataset, [merged], removes=inputs, data_change=False, txns=txns)
    except CommitConflict:
        return CompactionResult(dataset, partition, len(inputs), 0, None)
    return CompactionResult(dataset, partition, len(inputs), rows_out, f"{dataset}/{rel}")


def compact_dataset(
    store: Store, dataset: str, *, before_date: str | None = None, min_files: int = 2, lease: Lease | None = None,
    target_bytes: int = TARGET_FILE_BYTES,
) -> list[CompactionResult]:
    """Pack the small files of ``dataset``'s closed partitions into files of at most
    ``target_bytes`` (see the module docstring).

    ``before_date`` (``YYYY-MM-DD``, today's KST date: the hourly job) marks what is still open:
    ``raw`` dates from it on are left alone, the ``quarantine`` month holding it merges only
    files no compaction wrote, a closed ``raw`` day packs only files no compaction wrote, and
    only partitions changed since the last hourly run or closed in the last two days are looked
    at (the version looked up to is recorded as the txn :data:`COMPACTION_APP`). ``None`` (by
    hand): every partition is closed and every small file, merged ones included, is packed.
    Reads only the seals of the periods it is about to touch, and the newest."""
    table = store.table(dataset)
    sizes = table.file_sizes()  # one listing of the log, with sizes, for every partition
    version = table.version()
    looked = _looked_at(store, dataset, before_date, version)
    by_partition: dict[str, list[str]] = {}
    for path in sorted(sizes):
        by_partition.setdefault(posixpath.dirname(path), []).append(path)
    plans: list[tuple[str, list[str]]] = []
    for partition, paths in sorted(by_partition.items()):
        if looked is not None and partition not in looked:
            continue  # unchanged since the last run and not just closed: nothing new to pack
        day = _date_of(partition)
        if not partition or (before_date is not None and day and day >= before_date):
            continue  # today's raw: appended to all day, read by statistics, merged once it closes
        if before_date is not None and (day or _period_of(partition) >= before_date[:7]):
            # a closed day is packed once, from the files the consumer wrote; files landing late
            # are packed among themselves, never with a merged file again (the month still
            # open in quarantine likewise); a closed quarantine month repacks everything small
            paths = [p for p in paths if not posixpath.basename(p).startswith(_MERGED_PREFIX)]
        small = [p for p in paths if sizes[p] * 2 < target_bytes]
        if len(small) >= min_files:
            plans.append((partition, small))
    # fails closed on a seal it needs (and on the newest, even with nothing to pack)
    sealed = set(sealed_files(store, periods_of(p for p, _ in plans)))
    results = []
    for partition, small in plans:
        free = [p for p in small if relative_path(store, store.path(dataset, p)) not in sealed]
        for group in _bins(free, sizes, target_bytes):
            if len(group) >= min_files:
                result = _merge(store, dataset, partition, group, lease)
                if result.merged is not None:
                    results.append(result)
    if before_date is not None and version >= 0 and table.transaction_version(COMPACTION_APP) != version:
        # remember how far the log was looked at, so the next hour reads only what came after
        txns = {COMPACTION_APP: version, **(lease.fence(dataset) if lease is not None else {})}
        try:
            table.commit([], txns=txns, data_change=False)
        except CommitConflict:
            pass  # another upkeep recorded it meanwhile: the next run looks a little further back
    return results


def _looked_at(store: Store, dataset: str, before_date: str | None, version: int) -> set[str] | None:
    """Partitions the hourly run must look at: those with files committed since the version
    recorded by the last run (:data:`COMPACTION_APP`), and the recently closed ones (the two
    days before ``before_date``; this and last month in ``quarantine``). ``None``: all of them
    (no ``before_date``, a first run, or a log cleaned up since). Partitions of older, untouched
    history (sealed files that may never be packed among them) are not looked at again, so
    neither is their seal: the cost follows what changed, not the history."""
    if before_date is None:
        return None
    done = store.table(dataset).transaction_version(COMPACTION_APP)
    if done is None:
        return None
    out: set[str] = set()
    for v in range(done + 1, version + 1):
        actions = commit_actions(store, dataset, v)
        if actions is None:
            return None
        out.update(
            posixpath.dirname(a["add"]["path"]) for a in actions if a.get("add") and a["add"].get("dataChange", True)
        )
    today = Date.fromisoformat(before_date)
    recent = {(today - timedelta(days=d)).isoformat() for d in (1, 2)}
    months = {before_date[:7], (today.replace(day=1) - timedelta(days=1)).isoformat()[:7]}
    for partition in {posixpath.dirname(p) for p in store.table(dataset).files()}:
        day = _date_of(partition)
        if (day and day in recent) or (not day and _period_of(partition) in months):
            out.add(partition)
    return out


def _bins(paths: list[str], sizes: dict[str, int], target_bytes: int) -> list[list[str]]:
    """``paths`` in order, cut into runs whose sizes sum to at most ``target_bytes`` (every run
    but the last then holds more than half of it, so it is not small next time)."""
    bins: list[list[str]] = [[]]
    total = 0
    for path in paths:
        if bins[-1] and total + sizes[path] > target_bytes:
            bins.append([])
            total = 0
        bins[-1].append(path)
        total += sizes[path]
    return bins


def vacuum(
    store: Store, retention_hours: int = 24, *, lease: Lease | None = None, periods: set[str] | None = None
) -> dict[str, int]:
    """Delete files that tables no longer list (replaced by compaction or roll-up), older than
    ``retention_hours``; never one that a manifest seals or lists as read (those are kept, and
    ``verify`` names how they came to be unlisted). ``periods`` limits it to files of those
    periods (and files outside any period), reading only their seals: a file a seal keeps stays a
    candidate forever, so looking at every period every hour would read every seal every hour.
    Returns the number deleted per table."""
    candidates = {name: store.table(name).vacuum_candidates(retention_hours) for name in TABLES}
    if periods is not None:  # the hourly job: recent periods only (sealed files kept in old ones stay candidates forever)
        candidates = {
            name: [p for p in paths if (found := periods_of([p])) is None or found <= periods]
            for name, paths in candidates.items()
        }
    # only the seals of the periods holding candidates (all of them if a candidate has no period)
    sealed = set(sealed_files(store, periods_of(p for paths in candidates.values() for p in paths)))
    deleted: dict[str, int] = {}
    for name in TABLES:
        if lease is not None:
            lease.check()
        doomed = [p for p in candidates[name] if relative_path(store, store.path(name, p)) not in sealed]
        for rel in doomed:
            store.delete(store.path(name, rel))
        deleted[name] = len(doomed)
    return deleted


def _partition_stats(partition: str) -> dict[str, tuple[object, object]]:
    out: dict[str, tuple[object, object]] = {}
    for fragment in partition.strip("/").split("/"):
        key, _, value = fragment.partition("=")
        out[key] = (value, value)
    return out


def _period_of(partition: str) -> str:
    for fragment in partition.split("/"):
        if fragment.startswith("period="):
            return fragment[len("period=") :]
    return ""


def _date_of(partition: str) -> str:
    for fragment in partition.split("/"):
        if fragment.startswith("date="):
            return fragment[len("date=") :]
    return ""
