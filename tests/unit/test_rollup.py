"""usage_hourly rolled up from raw: one row per hour × device × owner, sealed files kept."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
from spine_events import ACCOUNTS, event, jsonl

from storage.dataset import Store
from storage.manifest import seal_period, verify
from storage.rollup import roll_up
from streams.pipeline import BatchProcessor

pytestmark = pytest.mark.unit


def duck_sum(files: list[str], column: str = "gpu_microseconds") -> int:
    """Sum of a column over files, read by DuckDB (an independent reader)."""
    return duckdb.sql(f"select sum({column})::BIGINT from read_parquet({files!r})").fetchall()[0][0] or 0


def test_an_hour_of_one_minute_batches_rolls_up_to_one_row_per_device(tmp_path: Path) -> None:
    # given 20 devices reporting every minute for an hour, one batch per minute
    store = Store(tmp_path)
    processor = BatchProcessor(store, ACCOUNTS)
    for minute in range(60):
        events = [event(f"2026-11-02T03:{minute:02d}:00Z", gpu=f"GPU-{d:04d}", busy_gpu_seconds=30.0) for d in range(20)]
        processor.process([(f"m{minute}", jsonl(*events))])
    # when the hour is rolled up
    result = roll_up(store)
    # then usage_hourly holds exactly one row per device-hour, in one file, summing raw exactly
    files = store.files("usage_hourly")
    assert duckdb.sql(f"select count(*) from read_parquet({files!r})").fetchall()[0][0] == 20
    assert len(files) == 1 and result.dates == ("2026-11-02",)
    assert duck_sum(files) == duck_sum(store.files("raw")) == 20 * 3600 * 1_000_000
    assert duck_sum(files, "events") == 1200


def test_roll_up_touches_only_dates_that_changed(tmp_path: Path) -> None:
    store = Store(tmp_path)
    processor = BatchProcessor(store, ACCOUNTS)
    processor.process([("a", jsonl(event("2026-11-02T03:00:00Z"), event("2026-11-04T03:00:00Z")))])
    assert roll_up(store).dates == ("2026-11-02", "2026-11-04")
    processor.process([("b", jsonl(event("2026-11-04T03:01:00Z")))])
    assert roll_up(store).dates == ("2026-11-04",)
    assert roll_up(store).committed is False  # nothing new
    assert duck_sum(store.files("usage_hourly")) == 3 * 60_000_000


def test_late_events_beside_a_sealed_roll_up_add_the_difference(tmp_path: Path) -> None:
    # given a rolled-up day sealed by a close
    store = Store(tmp_path)
    processor = BatchProcessor(store, ACCOUNTS)
    processor.process([("a", jsonl(*(event(f"2026-11-02T03:{m:02d}:00Z") for m in range(10))))])
    roll_up(store)
    sealed = store.files("usage_hourly")
    seal_period(store, "2026-11", sealed, {"gpu_hours": "0"})
    # when late events of that hour arrive and the day is rolled up again
    processor.process([("late", jsonl(*(event(f"2026-11-02T03:{m:02d}:00Z") for m in range(10, 15))))])
    roll_up(store)
    # then the sealed file is untouched, and the day's files sum to raw exactly
    files = store.files("usage_hourly")
    assert set(sealed) < set(files) and len(files) == 2
    assert verify(store).ok
    assert duck_sum(files) == duck_sum(store.files("raw")) == 15 * 60_000_000
    assert duck_sum([f for f in files if f not in sealed], "events") == 5


def test_a_close_bills_exactly_the_files_it_seals_while_usage_lands_meanwhile(tmp_path: Path) -> None:
    """A roll-up committing during a close (between the close's first listing and its reads)
    changes neither what it bills nor what it seals: both come from one snapshot."""
    import json

    from accounting.close import close_month
    from accounting.registry import load_registry
    from gpuledger.wiring import accounts_of

    registry = load_registry(Path(__file__).resolve().parents[2] / "examples" / "registry.toml")
    store = Store(tmp_path)
    processor = BatchProcessor(store, accounts_of(registry))
    processor.process([("a", jsonl(*(event(f"2026-11-02T03:{m:02d}:00Z", project="snu-llm") for m in range(10))))])
    roll_up(store)

    class _LandsDuringTheClose(Store):
        landed = False

        def scan_files(self, files, schema):  # the close reading its inputs: usage lands right now
            if not self.landed:
                self.landed = True
                processor.process([("b", jsonl(*(event(f"2026-11-02T04:{m:02d}:00Z", project="snu-llm") for m in range(5))))])
                roll_up(Store(tmp_path))
            return super().scan_files(files, schema)

    closing = _LandsDuringTheClose(tmp_path)
    close_month(closing, registry, "2026-11")
    assert closing.landed
    manifest = json.loads((tmp_path / "manifests" / "2026-11.json").read_text())
    sealed_usage = [f["path"] for f in manifest["files"] if f["path"].startswith("usage_hourly/")]
    billed = duckdb.sql(
        f"select sum(gpu_microseconds)::BIGINT from read_parquet('{tmp_path}/ledgers/billing/period=2026-11/billing.parquet')"
    ).fetchall()[0][0]
    assert billed == duck_sum([str(tmp_path / p) for p in sealed_usage]) == 10 * 60_000_000
    assert verify(store).ok


def test_hour_by_hour_and_one_pass_roll_ups_give_the_same_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import polars as pl

    import storage.rollup as rollup

    frames = []
    for name, limit in (("hourly", 0), ("one-pass", 10**9)):
        monkeypatch.setattr(rollup, "ONE_PASS_ROWS", limit)
        store = Store(tmp_path / name)
        processor = BatchProcessor(store, ACCOUNTS)
        for hour in (14, 15, 16):  # 15:00 UTC is midnight KST: two dates
            processor.process([(f"m{hour}", jsonl(*(event(f"2026-11-02T{hour}:{m:02d}:00Z", gpu=f"GPU-{g}") for m in range(0, 60, 7) for g in range(3))))])
        roll_up(store)
        frames.append(pl.read_parquet(store.files("usage_hourly")).sort("hour_start", "gpu_uuid"))
    assert frames[0].height == 9 and frames[0].equals(frames[1])
