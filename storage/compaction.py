"""Merge the small Parquet files of a partition into one, crash-safe.

The stream consumer writes one file per partition per micro-batch, so a day of ``raw/`` or
``usage_hourly/`` grows thousands of small files and scans slow down. :func:`compact` merges
the files of one leaf partition (``period=…/date=…``) into a single file in one
:class:`~storage.dataset.Transaction`: the merged file is staged, then the journal records
``staging → final`` and the deletes of the files it replaces (the commit point), then both
are applied. Before the journal, a crash leaves the old files and only staging to drop; after
it, :meth:`Store.recover` finishes the move and the deletes. So once recovered, a reader sees
every row exactly once: in the old files or in the merged one, never both, never neither.

Invariants:

- rows are copied, never changed: the merged file holds the concatenation of the inputs in
  file-name order, under the dataset's declared schema (row counts are checked before commit);
- a file sealed by a period's manifest is never touched (sealed partitions stay byte-for-byte
  what the manifest says; late files beside them may be merged among themselves);
- the merged file's name derives from the names of its inputs, so compacting again after a
  crash produces the same name, and a partition with fewer than ``min_files`` is left alone.

The consumer's dedupe reads event ids from ``raw/`` files, whichever file holds them, so a
replayed batch stays deduplicated after its file was merged away. Do not run compaction and
``Store.recover`` at the same time (recover drops staging of batches in flight).
"""

from __future__ import annotations

import hashlib
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl
import pyarrow as pa

from storage.dataset import Store
from storage.errors import StorageError
from storage.manifest import relative_path, sealed_files
from storage.schemas import RAW_EVENTS, RAW_PARTITIONS, USAGE_HOURLY, USAGE_HOURLY_PARTITIONS

COMPACTABLE: dict[str, tuple[pa.Schema, tuple[str, ...]]] = {
    "raw": (RAW_EVENTS, RAW_PARTITIONS),
    "usage_hourly": (USAGE_HOURLY, USAGE_HOURLY_PARTITIONS),
}


@dataclass(frozen=True, slots=True)
class CompactionResult:
    dataset: str
    partition: str
    files_in: int
    rows: int
    merged: str | None  # path of the merged file relative to the root, None if nothing done


def leaf_partitions(store: Store, dataset: str) -> list[str]:
    """Hive fragments (``period=…/date=…``) of the dataset that hold files, sorted."""
    base = store.path(dataset)
    parts = {posixpath.dirname(path)[len(base) + 1 :] for path in store.files(dataset)}
    return sorted(p for p in parts if p)


def compact(store: Store, dataset: str, partition: str, *, min_files: int = 2) -> CompactionResult:
    """Merge the unsealed Parquet files of ``<dataset>/<partition>`` into one file."""
    schema, partition_columns = _declared(dataset)
    fragments = partition.strip("/").split("/")
    columns = [f.split("=", 1)[0] for f in fragments]
    if tuple(columns) != partition_columns or any("=" not in f for f in fragments):
        raise StorageError(
            f"{dataset} partitions are {'/'.join(c + '=…' for c in partition_columns)}, got {partition!r}"
        )
    directory = store.path(dataset, partition)
    sealed = sealed_files(store)
    inputs = [
        path
        for path in store.files(dataset)
        if posixpath.dirname(path) == directory and relative_path(store, path) not in sealed
    ]
    if len(inputs) < min_files:
        return CompactionResult(dataset, partition, len(inputs), 0, None)

    tables = [store.read_table(path).select(schema.names).cast(schema) for path in inputs]
    merged = pa.concat_tables(tables)
    rows_in = sum(t.num_rows for t in tables)
    if merged.num_rows != rows_in:  # pragma: no cover - concat never drops rows; belt and braces
        raise StorageError(f"compaction of {dataset}/{partition} lost rows")

    names = "\n".join(relative_path(store, p) for p in inputs)
    batch_id = "compact-" + hashlib.sha256(names.encode()).hexdigest()[:24]
    tx = store.transaction(batch_id)
    finals = tx.stage(dataset, pl.from_arrow(merged), schema, partition_columns)
    if finals != [posixpath.join(directory, f"part-{batch_id}.parquet")]:
        raise StorageError(f"files of {dataset}/{partition} carry other partition values than their path")
    for path in inputs:
        tx.delete(path)
    tx.commit()
    return CompactionResult(dataset, partition, len(inputs), rows_in, relative_path(store, finals[0]))


def compact_dataset(
    store: Store,
    dataset: str,
    *,
    before_date: str | None = None,
    min_files: int = 2,
) -> list[CompactionResult]:
    """Compact every leaf partition of ``dataset`` (those whose ``date`` < ``before_date``).

    The scheduler passes ``before_date`` = the current KST date, so the partition the consumer
    is still writing is left alone until the day is over.
    """
    results = []
    for partition in leaf_partitions(store, dataset):
        if before_date is not None and _date_of(partition) >= before_date:
            continue
        result = compact(store, dataset, partition, min_files=min_files)
        if result.merged is not None:
            results.append(result)
    return results


def _declared(dataset: str) -> tuple[pa.Schema, tuple[str, ...]]:
    try:
        return COMPACTABLE[dataset]
    except KeyError:
        raise StorageError(f"only {', '.join(COMPACTABLE)} are compacted, not {dataset!r}") from None


def _date_of(partition: str) -> str:
    for fragment in partition.split("/"):
        if fragment.startswith("date="):
            return fragment[len("date=") :]
    return ""


def partition_of(values: Sequence[tuple[str, str]]) -> str:
    """``[("period", "2026-11"), ("date", "2026-11-03")]`` → ``period=2026-11/date=2026-11-03``."""
    return "/".join(f"{k}={v}" for k, v in values)
