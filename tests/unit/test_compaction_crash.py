"""Compaction merges small files without losing or doubling a row, even when it crashes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pytest

from storage.compaction import compact, compact_dataset, leaf_partitions
from storage.dataset import Store
from storage.errors import StorageError
from storage.manifest import seal_period, verify
from storage.schemas import USAGE_HOURLY, USAGE_HOURLY_PARTITIONS

pytestmark = pytest.mark.unit

PARTITION = "period=2026-11/date=2026-11-03"


def _hourly(batch: int, rows: int = 3, date: str = "2026-11-03") -> pl.DataFrame:
    start = datetime(2026, 11, 2, 15, tzinfo=UTC) + timedelta(hours=batch)
    return pl.DataFrame(
        {
            "period": ["2026-11"] * rows,
            "date": [date] * rows,
            "hour_start": [start] * rows,
            "site": ["dc1"] * rows,
            "node": [f"node-{batch}"] * rows,
            "entity": ["gov"] * rows,
            "project": ["snu-llm"] * rows,
            "job_id": [None] * rows,
            "gpu_uuid": [f"GPU-{batch}-{i}" for i in range(rows)],
            "device_uuid": [f"GPU-{batch}-{i}" for i in range(rows)],
            "gpu_model": ["NVIDIA B200"] * rows,
            "mig_profile": [None] * rows,
            "gpu_fraction": [1.0] * rows,
            "gpu_microseconds": [3_600_000_000 - i for i in range(rows)],
            "busy_gpu_microseconds": [1_000_000 * i for i in range(rows)],
            "energy_joules": [None] * rows,
            "events": [60] * rows,
            "partial_events": [0] * rows,
            "samples": [360] * rows,
            "expected_samples": [360] * rows,
        }
    )


def _write_batches(store: Store, batches: int, date: str = "2026-11-03") -> None:
    for batch in range(batches):
        tx = store.transaction(f"b{batch:03d}-{date}")
        tx.stage("usage_hourly", _hourly(batch, date=date), USAGE_HOURLY, USAGE_HOURLY_PARTITIONS)
        tx.commit()


def _rows(root: Path) -> list[tuple[str, int]]:
    """Every (device, µs) row a reader sees, via an independent reader (pyarrow.dataset)."""
    files = sorted(str(p) for p in (root / "usage_hourly").rglob("*.parquet") if not p.name.startswith((".", "_")))
    table = pads.dataset(files, format="parquet").to_table(columns=["device_uuid", "gpu_microseconds"])
    return sorted(zip(table["device_uuid"].to_pylist(), table["gpu_microseconds"].to_pylist(), strict=True))


class _Crash(Exception):
    pass


class _CrashingHandler(pafs.FileSystemHandler):
    """A local filesystem that dies at its ``crash_at``-th move or delete (fault injection)."""

    def __init__(self, crash_at: int):
        self._fs = pafs.LocalFileSystem()
        self.crash_at = crash_at
        self.mutations = 0

    def _tick(self) -> None:
        if self.mutations == self.crash_at:
            raise _Crash(f"crash at mutation {self.mutations}")
        self.mutations += 1

    def __eq__(self, other: object) -> bool:
        return self is other

    def __ne__(self, other: object) -> bool:
        return self is not other

    def get_type_name(self) -> str:
        return "crashing"

    def normalize_path(self, path: str) -> str:
        return path

    def get_file_info(self, paths):
        return self._fs.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self._fs.get_file_info(selector)

    def create_dir(self, path, recursive):
        self._fs.create_dir(path, recursive=recursive)

    def delete_dir(self, path):
        self._tick()
        self._fs.delete_dir(path)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        self._fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self):
        raise NotImplementedError

    def delete_file(self, path):
        self._tick()
        self._fs.delete_file(path)

    def move(self, src, dest):
        self._tick()
        self._fs.move(src, dest)

    def copy_file(self, src, dest):
        self._fs.copy_file(src, dest)

    def open_input_stream(self, path):
        return self._fs.open_input_stream(path)

    def open_input_file(self, path):
        return self._fs.open_input_file(path)

    def open_output_stream(self, path, metadata):
        return self._fs.open_output_stream(path)

    def open_append_stream(self, path, metadata):
        return self._fs.open_append_stream(path)


def test_compact_merges_a_partition_into_one_file(tmp_path: Path) -> None:
    # given five micro-batch files in one day
    store = Store(tmp_path)
    _write_batches(store, 5)
    before = _rows(tmp_path)
    assert len(store.files("usage_hourly")) == 5
    # when the partition is compacted
    result = compact(store, "usage_hourly", PARTITION)
    # then one file holds exactly the same rows, under the declared schema
    files = store.files("usage_hourly")
    assert len(files) == 1
    assert result.files_in == 5 and result.rows == 15
    assert result.merged == f"usage_hourly/{PARTITION}/{Path(files[0]).name}"
    assert _rows(tmp_path) == before
    assert store.read_table(files[0]).schema.equals(USAGE_HOURLY)
    # and compacting one file again does nothing
    assert compact(store, "usage_hourly", PARTITION).merged is None


@pytest.mark.parametrize("crash_at", range(0, 12))
def test_a_crash_at_any_step_loses_and_doubles_nothing_after_recovery(tmp_path: Path, crash_at: int) -> None:
    # given four files, and a filesystem that dies at the crash_at-th move/delete of compaction
    _write_batches(Store(tmp_path), 4)
    before = _rows(tmp_path)
    handler = _CrashingHandler(crash_at)
    crashing = Store(str(tmp_path), filesystem=pafs.PyFileSystem(handler))
    try:
        compact(crashing, "usage_hourly", PARTITION)
        crashed = False
    except _Crash:
        crashed = True
    # when the process restarts and recovers
    restarted = Store(tmp_path)
    restarted.recover()
    # then every row is there exactly once, in the old files or the merged one
    assert _rows(tmp_path) == before
    assert len(restarted.files("usage_hourly")) in (1, 4)
    if not crashed:
        assert handler.mutations < 12  # every crash point of the protocol was exercised
    # and compaction run again completes to one file with the same rows
    compact(restarted, "usage_hourly", PARTITION)
    assert len(restarted.files("usage_hourly")) == 1
    assert _rows(tmp_path) == before


def test_sealed_files_are_never_touched(tmp_path: Path) -> None:
    # given a day sealed in a manifest, then two late files in the same partition
    store = Store(tmp_path)
    _write_batches(store, 3)
    sealed = store.files("usage_hourly")
    seal_period(store, "2026-11", sealed, {"gpu_hours": "0"})
    for batch in (7, 8):
        tx = store.transaction(f"late{batch}")
        tx.stage("usage_hourly", _hourly(batch), USAGE_HOURLY, USAGE_HOURLY_PARTITIONS)
        tx.commit()
    # when it is compacted
    result = compact(store, "usage_hourly", PARTITION)
    # then only the late files were merged and the seal still verifies
    assert result.files_in == 2
    assert set(sealed) <= set(store.files("usage_hourly"))
    assert len(store.files("usage_hourly")) == 4
    assert verify(store).ok


def test_compact_dataset_leaves_the_current_day_alone(tmp_path: Path) -> None:
    store = Store(tmp_path)
    _write_batches(store, 3, date="2026-11-03")
    _write_batches(store, 3, date="2026-11-04")
    results = compact_dataset(store, "usage_hourly", before_date="2026-11-04")
    assert [r.partition for r in results] == [PARTITION]
    assert leaf_partitions(store, "usage_hourly") == [PARTITION, "period=2026-11/date=2026-11-04"]
    assert len(store.files("usage_hourly")) == 1 + 3


def test_refuses_unknown_datasets_and_bad_partitions(tmp_path: Path) -> None:
    store = Store(tmp_path)
    with pytest.raises(StorageError, match="only raw, usage_hourly"):
        compact(store, "ledgers/billing", "period=2026-11")
    with pytest.raises(StorageError, match="partitions are"):
        compact(store, "usage_hourly", "date=2026-11-03")


def test_transaction_delete_cannot_remove_what_it_writes(tmp_path: Path) -> None:
    store = Store(tmp_path)
    tx = store.transaction("x1")
    (final,) = tx.stage("usage_hourly", _hourly(0), USAGE_HOURLY, USAGE_HOURLY_PARTITIONS)
    with pytest.raises(StorageError, match="cannot be deleted"):
        tx.delete(final)
