"""Upkeep writes a day about once and reads by period, not by history (issue 16, goals 5 and 7).

- today's raw partition is not copied again every hour (it was: 300, 600, … rows for 300 new);
- a closed day is packed once by target size, and a packed file is not copied again;
- the roll-up aggregates only the hours whose raw changed, re-hashing only the raw it reads,
  and its result is the same files a roll-up from scratch writes;
- the hourly jobs read the seals of the periods they touch (plus the newest), not every month
  ever sealed; an unreadable seal they depend on still stops them, naming it;
- a table's file listing is built once per Delta version.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from spine_events import ACCOUNTS, event, jsonl

import storage.seal as seal
from accounting.scheduler import run_compaction
from storage.compaction import compact_dataset
from storage.dataset import Store
from storage.rollup import roll_up
from storage.seal import SealUnreadable, seal_period, sealed_files
from streams.pipeline import BatchProcessor

pytestmark = pytest.mark.unit

DAY = "2026-11-03"  # KST; its UTC hours run from 2026-11-02T15:00Z
NOW_TODAY = datetime(2026, 11, 3, 12, tzinfo=UTC)  # 21:00 KST on DAY


def _hour_batch(processor: BatchProcessor, hour_utc: str, tag: str, devices: int = 5, first: int = 0) -> None:
    events = [event(f"{hour_utc}:{m:02d}:00Z", gpu=f"GPU-{d:04d}") for d in range(first, first + devices) for m in range(0, 60, 10)]
    processor.process([(tag, jsonl(*events))])


def _merged_rows(results) -> int:
    return sum(r.rows for r in results)


def test_the_hourly_upkeep_copies_none_of_todays_raw_and_a_closed_day_once(tmp_path: Path) -> None:
    store = Store(tmp_path)
    processor = BatchProcessor(store, ACCOUNTS)
    copied_per_hour = []
    for hour in range(6):  # six hours of today, the upkeep after each
        _hour_batch(processor, f"2026-11-03T0{hour}", f"h{hour}")
        _hour_batch(processor, f"2026-11-03T0{hour}", f"h{hour}b", first=100)
        run = run_compaction(store, NOW_TODAY, retention_hours=0)
        copied_per_hour.append(_merged_rows(r for r in run.compacted if r.dataset == "raw"))
    assert copied_per_hour == [0] * 6  # was 60, 120, … : the merged file was an input again
    assert len(store.table("raw").files()) == 12
    # the day closes: the next upkeep packs it once, the one after copies nothing
    tomorrow = datetime(2026, 11, 3, 16, tzinfo=UTC)  # 01:00 KST on 2026-11-04
    first = run_compaction(store, tomorrow, retention_hours=0).compacted
    assert _merged_rows(r for r in first if r.dataset == "raw") == 12 * 30
    assert run_compaction(store, tomorrow, retention_hours=0).compacted == ()
    assert len(store.table("raw").files()) == 1


def test_a_closed_day_is_packed_by_target_size_and_a_packed_file_is_not_copied_again(tmp_path: Path) -> None:
    store = Store(tmp_path)
    processor = BatchProcessor(store, ACCOUNTS)
    for i in range(8):
        _hour_batch(processor, f"2026-11-03T0{i}", f"b{i}")
    sizes = store.table("raw").file_sizes()
    target = 3 * max(sizes.values())  # three inputs fit a merged file
    results = compact_dataset(store, "raw", target_bytes=target)
    assert [r.files_in for r in results] == [3, 3, 2]
    after = store.table("raw").file_sizes()
    assert len(after) == 3 and all(size <= target for size in after.values())
    # the merged files are each at least half the target: never inputs again, even beside late files
    _hour_batch(processor, "2026-11-03T09", "late")
    _hour_batch(processor, "2026-11-03T10", "late2")
    again = compact_dataset(store, "raw", target_bytes=target)
    assert [(r.files_in, r.rows) for r in again] == [(2, 2 * 30)]  # the two late files only


def test_this_months_quarantine_merges_only_files_no_compaction_wrote(tmp_path: Path) -> None:
    store = Store(tmp_path)
    processor = BatchProcessor(store, ACCOUNTS)
    for i in range(4):
        processor.process([(f"bad{i}", jsonl(event(f"2026-11-03T0{i}:00:00Z")) + b"{not json\n")])
    first = [r for r in compact_dataset(store, "quarantine", before_date=DAY) if r.merged]
    assert [r.files_in for r in first] == [4]
    for i in range(4, 6):
        processor.process([(f"bad{i}", jsonl(event(f"2026-11-03T0{i}:00:00Z")) + b"{not json\n")])
    second = compact_dataset(store, "quarantine", before_date=DAY)
    assert [(r.files_in, r.rows) for r in second] == [(2, 2)]  # the merged file is not copied again
    assert len(store.table("quarantine").files()) == 2


class _CountsHashes(Store):
    hashed: list[str]

    def sha256_of(self, path: str):  # noqa: ANN201 - the Store's own signature
        self.hashed.append(path)
        return super().sha256_of(path)


def test_the_roll_up_aggregates_only_the_hours_that_changed(tmp_path: Path) -> None:
    store = _CountsHashes(tmp_path / "a")
    store.hashed = []
    processor = BatchProcessor(store, ACCOUNTS)
    for hour in range(5):
        _hour_batch(processor, f"2026-11-03T0{hour}", f"h{hour}")
    assert roll_up(store).hours == 24  # first roll-up of the date
    before = set(store.table("usage_hourly").files())
    assert len(before) == 5  # one file per hour that holds usage
    # a late batch of hour 02 only
    store.hashed.clear()
    _hour_batch(processor, "2026-11-03T02", "late", first=100)
    result = roll_up(store)
    assert len([p for p in store.hashed if "/raw/" in p]) == 2
    assert result.hours == 1 and result.dates == (DAY,)
    assert [p.rsplit("/", 1)[-1] for p in store.hashed if "/raw/" in p] == sorted(
        p.rsplit("/", 1)[-1] for p in store.table("raw").files_overlapping(
            "interval_start", datetime(2026, 11, 3, 2, tzinfo=UTC), datetime(2026, 11, 3, 3, tzinfo=UTC))
    ) and len(store.table("raw").files()) == 6  # only hour 02's two raw files were re-hashed, not the day's six
    after = set(store.table("usage_hourly").files())
    assert len(before - after) == 1 and len(after - before) == 1
    # and the incremental result is exactly what a roll-up from scratch writes
    fresh = Store(tmp_path / "b")
    again = BatchProcessor(fresh, ACCOUNTS)
    for hour in range(5):
        _hour_batch(again, f"2026-11-03T0{hour}", f"h{hour}")
    _hour_batch(again, "2026-11-03T02", "late", first=100)
    roll_up(fresh)
    assert set(fresh.table("usage_hourly").files()) == after


def _seal_months(store: Store, months: int) -> list[str]:
    periods = [f"{2025 + (m // 12)}-{m % 12 + 1:02d}" for m in range(months)]
    for period in periods:
        ledger = store.path("ledgers", "billing", f"period={period}", "billing.parquet")
        store.write_bytes_atomic(ledger, period.encode())
        seal_period(store, period, [ledger], {"amount_krw.gov": "1"})
    return periods


def _counting_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    reads: list[str] = []
    real = seal.read_manifest

    def counted(store: Store, period: str) -> dict:
        reads.append(period)
        return real(store, period)

    monkeypatch.setattr(seal, "read_manifest", counted)
    return reads


def test_the_hourly_jobs_read_the_seals_of_the_periods_they_touch_not_every_month(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(tmp_path)
    periods = _seal_months(store, 12)  # 2025-01 … 2025-12 sealed
    processor = BatchProcessor(store, ACCOUNTS)
    for i in range(3):
        _hour_batch(processor, f"2026-01-0{i + 2}T03", f"jan{i}")
    reads = _counting_reads(monkeypatch)
    roll_up(store)
    compact_dataset(store, "raw")
    run_compaction(store, datetime(2026, 1, 10, tzinfo=UTC), retention_hours=0)
    # each job read at most the newest seal (2025-12), never the eleven before it
    assert set(reads) <= {periods[-1]} and len(reads) <= 5
    assert len(sealed_files(store)) == 12  # the whole set is still there for verify and the close


def test_an_unreadable_seal_of_a_period_the_job_touches_still_stops_it(tmp_path: Path) -> None:
    store = Store(tmp_path)
    periods = _seal_months(store, 3)  # 2025-01 … 2025-03
    garbled = tmp_path / "manifests" / f"{periods[0]}.json"
    garbled.write_bytes(garbled.read_bytes()[:-30])
    processor = BatchProcessor(store, ACCOUNTS)
    processor.process([("late", jsonl(event("2025-01-20T03:00:00Z")))])  # late usage of sealed 2025-01
    with pytest.raises(SealUnreadable, match=r"manifests/2025-01\.json is unreadable") as caught:
        roll_up(store)
    assert "\n" not in str(caught.value)
    # a job that touches only 2025-03 (its newest seal) is not stopped by 2025-01's damage …
    assert sealed_files(store, {"2025-03"}) == {f"ledgers/billing/period=2025-03/billing.parquet": "2025-03"}
    # … and a file of another period in a seal is refused, which is what makes that sound
    other = store.path("raw", "period=2025-02", "date=2025-02-01", "x.parquet")
    store.write_bytes_atomic(other, b"x")
    with pytest.raises(Exception, match="table files of another period"):
        seal_period(store, "2025-04", [other], {"a": "1"})


def test_a_tables_file_listing_is_built_once_per_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from deltalake import DeltaTable

    store = Store(tmp_path)
    processor = BatchProcessor(store, ACCOUNTS)
    _hour_batch(processor, "2026-11-03T01", "a")
    built = []
    real = DeltaTable.get_add_actions

    def counted(self, *args, **kwargs):  # noqa: ANN001, ANN202
        built.append(self.version())
        return real(self, *args, **kwargs)

    monkeypatch.setattr(DeltaTable, "get_add_actions", counted)
    table = store.table("raw")
    for _ in range(5):
        table.files()
        table.files_overlapping("interval_start", datetime(2026, 11, 3, tzinfo=UTC), datetime(2026, 11, 4, tzinfo=UTC))
    assert len(built) == 1
    _hour_batch(processor, "2026-11-03T02", "b")  # a new version is listed anew (once)
    built.clear()  # the consumer's own pinned reads are not this listing's
    assert len(table.files()) == 2 and len(table.files()) == 2 and len(built) == 1


def test_old_sealed_partitions_are_not_looked_at_again_every_hour(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Small files sealed in an old month can never be packed; the hourly compaction must not
    re-read that month's seal every hour for them (it did: one more manifest per month, forever)."""
    store = Store(tmp_path)
    processor = BatchProcessor(store, ACCOUNTS)
    for i in range(2):  # two refused events of January: two small quarantine files
        processor.process([(f"q{i}", jsonl(event(f"2025-01-1{i}T03:00:00Z", project="no-such-project")))])
    january = store.files("quarantine/period=2025-01")
    assert len(january) == 2
    seal_period(store, "2025-01", january, {"a": "1"})
    _seal_months_from(store, ["2025-02", "2025-03"])
    reads = _counting_reads(monkeypatch)
    run_compaction(store, datetime(2025, 4, 10, tzinfo=UTC), retention_hours=0)
    assert "2025-01" in reads  # the first run looks at every partition once
    reads.clear()
    processor.process([("new", jsonl(event("2025-04-10T01:00:00Z")))])
    run_compaction(store, datetime(2025, 4, 10, 2, tzinfo=UTC), retention_hours=0)
    assert "2025-01" not in reads and set(reads) <= {"2025-03"}
    assert set(january) <= set(store.files("quarantine"))  # sealed files untouched


def _seal_months_from(store: Store, periods: list[str]) -> None:
    for period in periods:
        ledger = store.path("ledgers", "billing", f"period={period}", "billing.parquet")
        store.write_bytes_atomic(ledger, period.encode())
        seal_period(store, period, [ledger], {"amount_krw.gov": "1"})
