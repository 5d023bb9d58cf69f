"""Compaction merges small files of a table partition without losing or doubling a row."""

from __future__ import annotations

from pathlib import Path

import pytest
from deltalake import DeltaTable
from spine_events import ACCOUNTS, event, jsonl

from storage.compaction import compact, compact_dataset, vacuum
from storage.dataset import Store
from storage.errors import StorageError
from storage.manifest import seal_period, verify
from streams.pipeline import BatchProcessor

pytestmark = pytest.mark.unit

PARTITION = "period=2026-11/date=2026-11-03"


def _write_batches(store: Store, batches: int, first: int = 0) -> None:
    processor = BatchProcessor(store, ACCOUNTS)
    for batch in range(first, first + batches):
        processor.process([(f"m{batch}", jsonl(*(event(f"2026-11-03T0{batch % 10}:{m:02d}:00Z", node=f"n{batch}") for m in range(3))))])


def _rows(root: Path) -> list[tuple[str, int]]:
    """Every (event id, µs) row a reader sees, through an independent reader (delta-rs)."""
    table = DeltaTable(str(root / "raw")).to_pyarrow_table(columns=["event_id", "gpu_microseconds"])
    return sorted(zip(table["event_id"].to_pylist(), table["gpu_microseconds"].to_pylist(), strict=True))


def test_compact_merges_a_partition_into_one_file(tmp_path: Path) -> None:
    store = Store(tmp_path)
    _write_batches(store, 4)
    before = _rows(tmp_path)
    assert len(store.files("raw")) == 4 and len(before) == 12
    result = compact(store, "raw", PARTITION)
    assert (result.files_in, result.rows) == (4, 12)
    assert len(store.files("raw")) == 1
    assert _rows(tmp_path) == before
    assert sorted({f.rsplit("/", 1)[0] for f in store.table("raw").files()}) == [PARTITION]


class _Crash(Exception):
    pass


class _DiesBeforeCommit(Store):
    """A store whose process dies after compaction wrote the merged file, before its commit."""

    def commit_files(self, dataset, adds, **kwargs):
        raise _Crash("killed before the Delta commit")


def test_a_crash_before_the_commit_leaves_the_old_files_listed(tmp_path: Path) -> None:
    _write_batches(Store(tmp_path), 4)
    before = _rows(tmp_path)
    with pytest.raises(_Crash):
        compact(_DiesBeforeCommit(tmp_path), "raw", PARTITION)
    restarted = Store(tmp_path)
    assert len(restarted.files("raw")) == 4 and _rows(tmp_path) == before
    compact(restarted, "raw", PARTITION)  # run again: completes, same name, same rows
    assert len(restarted.files("raw")) == 1 and _rows(tmp_path) == before


def test_appends_during_compaction_are_kept(tmp_path: Path) -> None:
    store = Store(tmp_path)
    _write_batches(store, 3)

    class _AppendsFirst(Store):  # a consumer commits while the compaction is copying
        def commit_files(self, dataset, adds, **kwargs):
            _write_batches(Store(tmp_path), 1, first=5)
            return super().commit_files(dataset, adds, **kwargs)

    compact(_AppendsFirst(tmp_path), "raw", PARTITION)
    assert len(_rows(tmp_path)) == 12
    assert len(store.files("raw")) == 2  # the merged file and the one appended meanwhile


def test_sealed_files_are_never_touched_and_vacuum_deletes_only_replaced_files(tmp_path: Path) -> None:
    store = Store(tmp_path)
    _write_batches(store, 3)
    sealed = store.files("raw")
    seal_period(store, "2026-11", sealed, {"gpu_hours": "0"})
    _write_batches(store, 2, first=3)
    result = compact(store, "raw", PARTITION)
    assert result.files_in == 2
    assert set(sealed) <= set(store.files("raw")) and len(store.files("raw")) == 4
    assert verify(store).ok
    removed = vacuum(store, retention_hours=0)
    assert removed["raw"] == 2  # the two late files that were merged, nothing sealed
    assert all(Path(p).exists() for p in store.files("raw"))
    assert verify(store).ok and len(_rows(tmp_path)) == 15


def test_compact_dataset_and_bad_input(tmp_path: Path) -> None:
    store = Store(tmp_path)
    _write_batches(store, 2)
    assert [r.partition for r in compact_dataset(store, "raw")] == [PARTITION]
    with pytest.raises(StorageError, match="only the tables"):
        compact(store, "ledgers", PARTITION)
    with pytest.raises(StorageError, match="partitions are"):
        compact(store, "raw", "date=2026-11-03")


def test_the_merged_file_keeps_the_event_time_range_in_the_log(tmp_path: Path) -> None:
    """Readers prune by ``interval_start`` statistics in the log (dedupe, the roll-up): a merged
    file without them would be opened by every hour's read (issue 16)."""
    import json

    store = Store(tmp_path)
    _write_batches(store, 4)  # events from 00:00 to 03:02 UTC
    merged = compact(store, "raw", PARTITION).merged
    assert merged is not None
    log = DeltaTable(str(tmp_path / "raw"))
    entry = tmp_path / "raw" / "_delta_log" / f"{log.version():020d}.json"
    adds = [json.loads(line)["add"] for line in entry.read_text().splitlines() if '"add"' in line]
    (add,) = adds
    stats = json.loads(add["stats"])
    assert stats["minValues"]["interval_start"] == "2026-11-03T00:00:00Z"
    assert stats["maxValues"]["interval_start"] == "2026-11-03T03:02:00Z"
    # and the log's pruning uses them: an hour outside the range does not list the file
    from datetime import UTC, datetime

    assert store.table("raw").files_overlapping(
        "interval_start", datetime(2026, 11, 3, 5, tzinfo=UTC), datetime(2026, 11, 3, 6, tzinfo=UTC)
    ) == []
