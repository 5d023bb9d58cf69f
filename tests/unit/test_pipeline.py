"""Batch processing: dedupe, KST hour and month bucketing, quarantine, atomic writes."""

from __future__ import annotations

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from spine_events import ACCOUNTS, event, jsonl

from storage.dataset import Store
from storage.rollup import roll_up
from storage.schemas import QUARANTINE, RAW_EVENTS, USAGE_HOURLY
from streams.pipeline import BatchProcessor

pytestmark = pytest.mark.unit


def read(store: Store, dataset: str):
    if dataset == "usage_hourly":
        roll_up(store)  # usage_hourly is rolled up from raw, not written by the consumer
    files = store.files(dataset)
    return ds.dataset(files, format="parquet").to_table() if files else None


def test_a_replayed_batch_is_not_counted_twice(tmp_path) -> None:
    store = Store(tmp_path)
    batch = [("bus/0@0", jsonl(event("2026-11-02T00:00:00Z"), event("2026-11-02T00:01:00Z")))]
    first = BatchProcessor(store, ACCOUNTS).process(batch)
    again = BatchProcessor(store, ACCOUNTS).process(batch)  # a fresh processor: the index comes from raw/
    assert (first.accepted, first.duplicates) == (2, 0)
    assert (again.accepted, again.duplicates) == (0, 2)
    hourly = read(store, "usage_hourly")
    assert sum(hourly["gpu_microseconds"].to_pylist()) == 120_000_000


def test_duplicates_inside_one_batch_keep_the_first(tmp_path) -> None:
    store = Store(tmp_path)
    e = event()
    result = BatchProcessor(store, ACCOUNTS).process([("m1", jsonl(e, e)), ("m2", jsonl(e))])
    assert (result.accepted, result.duplicates) == (1, 2)


def test_hours_and_months_are_kst(tmp_path) -> None:
    """Given events either side of 15:00 UTC on 30 November (= 00:00 KST on 1 December)."""
    store = Store(tmp_path)
    before = event("2026-11-30T14:59:00Z")
    after = event("2026-11-30T15:00:00Z")
    BatchProcessor(store, ACCOUNTS).process([("m", jsonl(before, after))])
    hourly = read(store, "usage_hourly").to_pylist()
    by_period = {(r["period"], r["date"], r["hour_start"].isoformat()) for r in hourly}
    assert by_period == {
        ("2026-11", "2026-11-30", "2026-11-30T14:00:00+00:00"),
        ("2026-12", "2026-12-01", "2026-11-30T15:00:00+00:00"),
    }
    assert any("period=2026-12/date=2026-12-01" in f for f in store.files("raw"))


def test_hourly_rows_sum_the_intervals_of_a_device(tmp_path) -> None:
    store = Store(tmp_path)
    events = [event(f"2026-11-02T03:{m:02d}:00Z", busy_gpu_seconds=15.0) for m in range(60)]
    mig = event("2026-11-02T03:00:00Z", gpu="GPU-0002", device="MIG-7", mig_profile="1g.23gb",
                gpu_fraction=1 / 7, gpu_seconds=60 / 7, busy_gpu_seconds=0.0, flags=["partial_interval"])
    BatchProcessor(store, ACCOUNTS).process([("m", jsonl(*events, mig))])
    rows = {r["device_uuid"]: r for r in read(store, "usage_hourly").to_pylist()}
    assert rows["GPU-0001"]["gpu_microseconds"] == 3_600_000_000
    assert rows["GPU-0001"]["busy_gpu_microseconds"] == 900_000_000
    assert rows["GPU-0001"]["events"] == 60
    assert rows["MIG-7"]["gpu_microseconds"] == 8_571_429  # 60/7 s rounded to the microsecond once
    assert rows["MIG-7"]["partial_events"] == 1


def test_refused_lines_are_kept_once_with_their_reason(tmp_path) -> None:
    store = Store(tmp_path)
    batch = [("bus/0@5", jsonl(event(entity="acme")) + b"\n{oops")]
    first = BatchProcessor(store, ACCOUNTS).process(batch)
    BatchProcessor(store, ACCOUNTS).process(batch)  # replayed: quarantine keeps each line once
    assert first.refused == 2
    rows = read(store, "quarantine").to_pylist()
    assert sorted((r["reason_code"], r["source"]) for r in rows) == [
        ("not_json", "bus/0@5#2"),
        ("unknown_entity", "bus/0@5#1"),
    ]
    unknown = next(r for r in rows if r["reason_code"] == "unknown_entity")
    assert unknown["period"] == "2026-11" and unknown["entity"] == "acme"
    assert unknown["gpu_microseconds"] == 60_000_000
    assert '"entity": "acme"' in unknown["raw"] or '"entity":"acme"' in unknown["raw"]


def test_files_have_exactly_the_declared_schemas(tmp_path) -> None:
    store = Store(tmp_path)
    BatchProcessor(store, ACCOUNTS).process([("m", jsonl(event(), event(entity="acme")))])
    for dataset, schema in (("raw", RAW_EVENTS), ("usage_hourly", USAGE_HOURLY), ("quarantine", QUARANTINE)):
        for path in store.files(dataset):
            assert pq.read_schema(path).remove_metadata().equals(schema), dataset


def test_files_of_a_batch_that_never_committed_are_invisible(tmp_path) -> None:
    """Given a batch's files written but its Delta commit never made (the process died),
    readers see nothing; the next commit does not pick them up either."""
    import polars as pl

    store = Store(tmp_path)
    BatchProcessor(store, ACCOUNTS).process([("m", jsonl(event("2026-11-02T00:00:00Z")))])
    before = store.files("raw")
    frame = read(store, "raw")
    orphan = store.write_files("raw", pl.from_arrow(frame), "dead")  # written, never committed
    assert orphan and store.exists(store.path("raw", orphan[0].path))
    assert store.files("raw") == before
    BatchProcessor(store, ACCOUNTS).process([("m2", jsonl(event("2026-11-02T00:01:00Z")))])
    assert store.path("raw", orphan[0].path) not in store.files("raw")
    assert read(store, "raw").num_rows == 2
