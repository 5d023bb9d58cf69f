"""The scheduler closes every due month exactly once, across restarts and downtime.

The closer here is a twin of :mod:`accounting.close` with the same two calls: ``due_months``
(every month from the first with data up to the one before ``now``'s KST month, not sealed)
and ``close_month`` (writes a ledger and seals it with the real :func:`seal_period`). Each
call of ``close_month`` is appended to ``closes.log`` in the data dir, so a test counts real
calls, including calls made by jobs stored in and fired from the SQLite job store.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import polars as pl
import pytest
from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from accounting.schemas import COMPLIANCE
from accounting.scheduler import (
    COMPACTION_ID,
    MONTHLY_CLOSE_ID,
    SNAPSHOT_ID,
    ScheduleConfig,
    catch_up,
    configure,
    monthly_close_job,
    run_due_closes,
)
from storage.dataset import Store, to_table
from storage.lease import hold
from storage.manifest import sealed_periods, verify

pytestmark = pytest.mark.unit

KST = ZoneInfo("Asia/Seoul")
FIRST_MONTH = "2026-10"
TWIN = "tests.unit.test_scheduler_close_once:TwinCloser"


def _months(first: str, before: str) -> list[str]:
    year, month = (int(x) for x in first.split("-"))
    out = []
    while f"{year:04d}-{month:02d}" < before:
        out.append(f"{year:04d}-{month:02d}")
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return out


class TwinCloser:
    def __init__(self, registry_path: Path):
        self.registry_path = registry_path

    def due_months(self, store: Store, now: datetime) -> list[str]:
        current = now.astimezone(KST).strftime("%Y-%m")
        sealed = set(sealed_periods(store))
        return [m for m in _months(FIRST_MONTH, current) if m not in sealed]

    def close_month(self, store: Store, period: str, *, signing_key: Path | None, lease=None) -> object:
        from storage.manifest import seal_period

        log = Path(store.root) / "closes.log"
        with log.open("a") as handle:  # test bookkeeping, not product code
            handle.write(period + "\n")
        frame = pl.DataFrame({name: [None] for name in COMPLIANCE.names}).with_columns(
            pl.lit(period).alias("period"), pl.lit("gov").alias("entity")
        )
        path = store.path("ledgers/compliance", f"period={period}", "compliance.parquet")
        store.write_parquet_atomic(path, to_table(frame, COMPLIANCE))
        return seal_period(store, period, [path], {"rows": "1"}, signing_key=signing_key)


def _closes(data_dir: Path) -> list[str]:
    log = data_dir / "closes.log"
    return log.read_text().split() if log.exists() else []


def test_restart_across_a_month_boundary_closes_that_month_once(tmp_path: Path) -> None:
    # given a scheduler that ran in late November (October already due and closed)
    store = Store(tmp_path)
    closer = TwinCloser(tmp_path / "registry.toml")
    before = datetime(2026, 11, 30, 23, 0, tzinfo=KST)
    assert run_due_closes(store, closer, before).closed == ("2026-10",)
    # when it is down over the 1st, and restarts on 3 December: catch-up, then the job fires
    after = datetime(2026, 12, 3, 9, 0, tzinfo=KST)
    catch_up_run = run_due_closes(store, closer, after)
    fired = run_due_closes(store, closer, after)
    # then November closed exactly once, and nothing was closed twice
    assert catch_up_run.closed == ("2026-11",)
    assert fired.closed == () and fired.due == ()
    assert _closes(tmp_path) == ["2026-10", "2026-11"]
    assert verify(store).ok


def test_the_15_utc_boundary_decides_when_a_month_is_due(tmp_path: Path) -> None:
    # 2026-11-30T15:00Z is 2026-12-01 00:00 KST: November is due from that instant, not before
    store = Store(tmp_path)
    closer = TwinCloser(tmp_path / "registry.toml")
    run_due_closes(store, closer, datetime(2026, 11, 30, 14, 59, 59, tzinfo=UTC))
    assert _closes(tmp_path) == ["2026-10"]
    run_due_closes(store, closer, datetime(2026, 11, 30, 15, 0, tzinfo=UTC))
    assert _closes(tmp_path) == ["2026-10", "2026-11"]


def test_several_missed_months_close_oldest_first(tmp_path: Path) -> None:
    store = Store(tmp_path)
    run = run_due_closes(store, TwinCloser(tmp_path), datetime(2027, 2, 1, 1, tzinfo=KST))
    assert run.closed == ("2026-10", "2026-11", "2026-12", "2027-01")
    assert verify(store).ok


def test_a_second_scheduler_holding_the_lease_closes_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path)
    with hold(Store(tmp_path), "another scheduler"):
        run = run_due_closes(store, TwinCloser(tmp_path), datetime(2026, 12, 3, tzinfo=KST))
    assert run.locked_out and run.closed == ()
    assert _closes(tmp_path) == []
    # once released, the next run closes
    run = run_due_closes(store, TwinCloser(tmp_path), datetime(2026, 12, 3, tzinfo=KST))
    assert run.closed == ("2026-10", "2026-11")


def test_naive_clock_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="timezone"):
        run_due_closes(Store(tmp_path), TwinCloser(tmp_path), datetime(2026, 12, 3))


def _config(tmp_path: Path, now: str) -> ScheduleConfig:
    return ScheduleConfig(
        data_dir=tmp_path,
        registry=tmp_path / "registry.toml",
        clock_ref=f"fixed:{now}",
        closer_ref=TWIN,
    )


def _fire_close_job(config: ScheduleConfig, times: int) -> list[str]:
    """Run a real BackgroundScheduler on the SQLite job store until the close job ran ``times``."""
    done = threading.Semaphore(0)
    errors: list[BaseException] = []

    def listener(event) -> None:
        if event.job_id != MONTHLY_CLOSE_ID:
            return
        if event.exception is not None:
            errors.append(event.exception)
        done.release()

    scheduler = configure(
        BackgroundScheduler(),
        config,
        triggers={MONTHLY_CLOSE_ID: IntervalTrigger(seconds=1, timezone=UTC)},
    )
    scheduler.add_listener(listener, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR)
    scheduler.start()
    try:
        jobs = {job.id for job in scheduler.get_jobs()}
        assert jobs == {COMPACTION_ID, SNAPSHOT_ID, MONTHLY_CLOSE_ID}
        for _ in range(times):
            assert done.acquire(timeout=30), "the close job never fired"
    finally:
        scheduler.shutdown(wait=True)
    assert not errors, errors
    return _closes(config.data_dir)


def test_real_background_scheduler_with_job_store_across_restart(tmp_path: Path) -> None:
    # given a scheduler with a SQLite job store running on 30 November (KST)
    november = _config(tmp_path, "2026-11-30T23:00:00+09:00")
    assert catch_up(november).closed == ("2026-10",)
    assert _fire_close_job(november, times=2) == ["2026-10"]
    assert (tmp_path / "scheduler" / "jobs.sqlite").exists()
    # when it restarts on 1 December after the close time: catch-up, and the job fires twice more
    december = _config(tmp_path, "2026-12-01T01:30:00+09:00")
    assert catch_up(december).closed == ("2026-11",)
    closes = _fire_close_job(december, times=2)
    # then November was closed exactly once, and the jobs were replaced, not doubled
    assert closes == ["2026-10", "2026-11"]
    assert verify(Store(tmp_path)).ok


def test_stored_job_function_runs_the_twin_by_reference(tmp_path: Path) -> None:
    closed = monthly_close_job(
        str(tmp_path), str(tmp_path / "r.toml"), clock_ref="fixed:2026-12-01T00:00:00+09:00", closer_ref=TWIN
    )
    assert closed == ["2026-10", "2026-11"]


def test_real_close_restarted_across_the_boundary_closes_november_once(tmp_path: Path) -> None:
    from acct_given import GOLDEN_REGISTRY, hours, write_usage

    from accounting.scheduler import RegistryCloser

    # given the real accounting.close, a registry file, and November usage
    registry = tmp_path / "registry.toml"
    registry.write_text(GOLDEN_REGISTRY)
    data = tmp_path / "data"
    store = Store(data)
    write_usage(store, hours("2026-11-29T00:00", 3, entity="gov", project="snu-llm", gpu_model="NVIDIA B200",
                             gpu_uuid="GPU-1"), "b1")
    closer = RegistryCloser(registry)
    # when the scheduler runs on 30 November, then restarts on 2 December (catch-up + a fire)
    assert run_due_closes(store, closer, datetime(2026, 11, 30, 23, tzinfo=KST)).closed == ()
    first = run_due_closes(store, closer, datetime(2026, 12, 2, 9, tzinfo=KST))
    ledger = (data / "ledgers/billing/period=2026-11/billing.parquet").read_bytes()
    second = run_due_closes(store, closer, datetime(2026, 12, 2, 9, tzinfo=KST))
    # then November closed once; the second run found nothing due and rewrote nothing
    assert first.closed == ("2026-11",)
    assert second.closed == () and second.due == ()
    assert (data / "ledgers/billing/period=2026-11/billing.parquet").read_bytes() == ledger
    assert sealed_periods(store) == ["2026-11"]
    assert verify(store).ok


def test_daily_snapshot_is_the_month_to_date_compliance_view(tmp_path: Path) -> None:
    import duckdb
    from acct_given import GOLDEN_REGISTRY, hours, write_usage

    from accounting.scheduler import compliance_snapshot_job

    # given 5 GPU-hours of gov on 2026-11-10 (KST) and a registry file
    registry = tmp_path / "registry.toml"
    registry.write_text(GOLDEN_REGISTRY)
    data = tmp_path / "data"
    write_usage(Store(data), hours("2026-11-10T00:00", 5, entity="gov", project="snu-llm", gpu_model="NVIDIA B200",
                                   gpu_uuid="GPU-1"), "b1")
    # when the snapshot job fires at 00:30 KST on 11 November
    path = compliance_snapshot_job(str(data), str(registry), clock_ref="fixed:2026-11-11T00:30:00+09:00")
    # then it covers November as of the 10th, and gov reports 5 GPU-hours
    assert path.endswith("snapshots/compliance/period=2026-11/as_of=2026-11-10.parquet")
    reported = duckdb.sql(
        f"SELECT reported_gpu_hours FROM read_parquet('{path}') WHERE entity = 'gov'"
    ).fetchall()
    assert [float(r[0]) for r in reported] == [5.0]


def test_a_close_that_stopped_before_its_seal_is_sealed_by_the_next_run(tmp_path: Path) -> None:
    from acct_given import GOLDEN_REGISTRY, hours, write_usage

    from accounting.scheduler import RegistryCloser
    from storage.manifest import manifest_path

    registry = tmp_path / "registry.toml"
    registry.write_text(GOLDEN_REGISTRY)
    data = tmp_path / "data"
    store = Store(data)
    write_usage(store, hours("2026-11-29T00:00", 2, entity="gov", project="snu-llm", gpu_model="NVIDIA B200",
                             gpu_uuid="GPU-1"), "b1")
    closer = RegistryCloser(registry)
    now = datetime(2026, 12, 2, 9, tzinfo=KST)
    run_due_closes(store, closer, now)
    sealed = Path(manifest_path(store, "2026-11")).read_bytes()
    # given the close stopped after writing its ledgers, before the seal (the manifest is absent)
    store.delete(manifest_path(store, "2026-11"))
    assert not verify(store).ok
    # when the scheduler runs again
    run = run_due_closes(store, closer, now)
    # then it sealed the month again, byte for byte the same manifest
    assert run.closed == ("2026-11",)
    assert Path(manifest_path(store, "2026-11")).read_bytes() == sealed
    assert verify(store).ok
