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

Today's partition is compacted too (the consumer keeps appending beside the merged file).

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
runs them: each commit then carries the holder's fencing token. They read the seals first and
stop, naming the manifest, if one is unreadable (:class:`~storage.seal.SealUnreadable`).
"""

from __future__ import annotations

import hashlib
import posixpath
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow.compute as pc
import pyarrow.parquet as pq

from storage.dataset import PARQUET_COMPRESSION, Store
from storage.delta import CommitConflict
from storage.errors import StorageError
from storage.seal import relative_path, sealed_files
from storage.schemas import TABLES

if TYPE_CHECKING:
    from storage.lease import Lease
_TIME_STATS = ("interval_start", "hour_start")  # event-time columns whose min/max the log keeps

COMPACTABLE = ("raw", "quarantine")  # what the hourly job compacts (usage_hourly is rolled up)


@dataclass(frozen=True, slots=True)
class CompactionResult:
    dataset: str
    partition: str
    files_in: int
    rows: int
    merged: str | None  # path of the merged file relative to the root, None if nothing done


def leaf_partitions(store: Store, dataset: str) -> list[str]:
    """Hive fragments (``period=…/date=…``) of the table that hold files, sorted."""
    return sorted({posixpath.dirname(p) for p in store.table(dataset).files()} - {""})


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
    sealed = set(sealed_files(store)) if sealed is None else sealed
    prefix = partition.strip("/") + "/"
    inputs = [
        p for p in (store.table(dataset).files() if listing is None else listing)
        if p.startswith(prefix) and "/" not in p[len(prefix):]
        and relative_path(store, store.path(dataset, p)) not in sealed
    ]
    if len(inputs) < min_files:
        return CompactionResult(dataset, partition, len(inputs), 0, None)

    name = "compact-" + hashlib.sha256("\n".join(inputs).encode()).hexdigest()[:24]
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
    store: Store, dataset: str, *, before_date: str | None = None, min_files: int = 2, lease: Lease | None = None
) -> list[CompactionResult]:
    """Compact every leaf partition of ``dataset`` (only dates before ``before_date`` if given)."""
    sealed = set(sealed_files(store))
    listing = store.table(dataset).files()  # one listing of the log for every partition
    by_partition: dict[str, int] = {}
    for path in listing:
        by_partition[posixpath.dirname(path)] = by_partition.get(posixpath.dirname(path), 0) + 1
    results = []
    for partition in sorted(p for p, n in by_partition.items() if p and n >= min_files):
        if before_date is not None and _date_of(partition) and _date_of(partition) >= before_date:
            continue
        result = compact(store, dataset, partition, min_files=min_files, sealed=sealed, listing=listing, lease=lease)
        if result.merged is not None:
            results.append(result)
    return results


def vacuum(store: Store, retention_hours: int = 24, *, lease: Lease | None = None) -> dict[str, int]:
    """Delete files that tables no longer list (replaced by compaction or roll-up), older than
    ``retention_hours``; never one that a manifest seals or lists as read (those are kept, and
    ``verify`` names how they came to be unlisted). Returns the number deleted per table."""
    sealed = set(sealed_files(store))  # fails closed on an unreadable seal
    deleted: dict[str, int] = {}
    for name in TABLES:
        if lease is not None:
            lease.check()
        doomed = [
            p for p in store.table(name).vacuum_candidates(retention_hours)
            if relative_path(store, store.path(name, p)) not in sealed
        ]
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


def _date_of(partition: str) -> str:
    for fragment in partition.split("/"):
        if fragment.startswith("date="):
            return fragment[len("date=") :]
    return ""
