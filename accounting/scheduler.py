"""Scheduled jobs: hourly compaction, a daily compliance snapshot, the monthly close.

``gpuledger schedule`` runs APScheduler 3.x (a :class:`BlockingScheduler`) whose jobs live in
a SQLAlchemy SQLite job store under ``<data-dir>/scheduler/jobs.sqlite``, so a restarted
scheduler keeps its jobs. Cron triggers run on the KST calendar (``Asia/Seoul``): compaction
at minute 5 of every hour, the compliance snapshot at 00:30 daily, the monthly close on the
1st at 01:00.

The daily snapshot writes the month-to-date compliance view to
``snapshots/compliance/period=…/as_of=….parquet`` (a progress view, not a ledger).

The monthly close does **not** trust APScheduler's misfire handling (its default grace of one
second silently skips a run missed during downtime). Every run of the close job — and one run
at start, before the scheduler starts — asks :func:`accounting.close.due_months` which months
are due (from ``raw``: what was consumed, rolled up or not), skips those already sealed, and
rolls up and closes the rest oldest first. A month therefore closes exactly once however many
times the job fires, and a month missed during downtime closes at the next start.

**One lease** (:mod:`storage.lease`, a commit in the store's own ``_lease`` Delta table, so it
holds on a local disk and on S3 alike) covers the close and all upkeep (roll-up, compaction,
vacuum): the CLI ``close`` and every job here take it, and each upkeep commit carries its
fencing token. The hourly job skips an hour when the lease is held (a close is sealing); the
close job waits for an upkeep run to end (``CLOSE_WAIT_S``). Two schedulers, or a scheduler
and a ``gpuledger close``, on any number of machines, never touch the tables at once.

Jobs are stored by reference (``accounting.scheduler:monthly_close_job``) with plain
arguments (paths and the reference of the clock), never pickled closures. The clock is
passed in: every job function takes ``now`` (or a clock reference that gives it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol
from zoneinfo import ZoneInfo

import pyarrow as pa
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.base import BaseScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.util import ref_to_obj

from accounting.registry import Registry
from accounting.schemas import COMPLIANCE
from storage.compaction import COMPACTABLE, CompactionResult, compact_dataset, vacuum
from storage.rollup import roll_up
from storage.dataset import Store
from storage.lease import Lease, LeaseHeld, hold
from storage.seal import ledger_periods, sealed_periods

log = logging.getLogger(__name__)

KST = ZoneInfo("Asia/Seoul")
FULL_VACUUM_HOUR_KST = 3  # the hourly upkeep of this hour vacuums every period, the others the last two months
JOB_STORE = "scheduler/jobs.sqlite"
CLOSE_WAIT_S = 30 * 60  # the close job waits this long for an upkeep run to give the lease back
MONTHLY_CLOSE_ID = "monthly-close"
COMPACTION_ID = "hourly-compaction"
SNAPSHOT_ID = "daily-compliance-snapshot"
SNAPSHOT_DIR = "snapshots/compliance"
DEFAULT_CLOCK = "accounting.scheduler:utc_now"
DEFAULT_CLOSER = "accounting.scheduler:RegistryCloser"
_FIXED = "fixed:"


def utc_now() -> datetime:
    """The real clock (the default ``clock_ref`` of stored jobs)."""
    return datetime.now(UTC)


def resolve_clock(ref: str) -> Callable[[], datetime]:
    """A clock from its stored reference: ``module:function``, or ``fixed:<ISO 8601 instant>``.

    The fixed form lets a stored job (which can hold only plain arguments) run at a chosen
    instant: tests, and re-running a missed close "as of" a date by hand.
    """
    if ref.startswith(_FIXED):
        instant = datetime.fromisoformat(ref[len(_FIXED) :])
        if instant.tzinfo is None:
            raise ValueError(f"clock {ref!r} needs a timezone")
        return lambda: instant
    return ref_to_obj(ref)


class Closer(Protocol):
    """What the close job needs from :mod:`accounting.close` (a twin in tests)."""

    def due_months(self, store: Store, now: datetime) -> list[str]: ...

    def close_month(self, store: Store, period: str, *, signing_key: Path | None, lease: Lease | None = None) -> object: ...


@dataclass(frozen=True, slots=True)
class RegistryCloser:
    """The real :class:`Closer`: :mod:`accounting.close` with the registry loaded from a file."""

    registry_path: Path

    def due_months(self, store: Store, now: datetime) -> list[str]:
        from accounting.close import due_months

        return list(due_months(store, now))

    def close_month(self, store: Store, period: str, *, signing_key: Path | None, lease: Lease | None = None) -> object:
        from accounting.close import close_month
        from accounting.registry import load_registry

        roll_up(store, lease=lease)  # usage_hourly level with raw as of now: the close bills what it seals
        return close_month(store, load_registry(self.registry_path), period, signing_key=signing_key, lease=lease)


@dataclass(frozen=True, slots=True)
class CloseRun:
    """What one run of the close job did."""

    now: datetime
    due: tuple[str, ...]
    closed: tuple[str, ...]
    skipped_sealed: tuple[str, ...] = field(default=())
    locked_out: bool = False


def run_due_closes(
    store: Store,
    closer: Closer,
    now: datetime,
    *,
    signing_key: Path | None = None,
    wait_s: float = 0.0,
) -> CloseRun:
    """Close every month due at ``now`` and not sealed yet, oldest first, exactly once.

    Idempotent: a month with a manifest is closed (the close seals last), so running this
    again, or from a second scheduler, closes nothing twice. A month with ledgers but no
    manifest (a close that stopped before sealing) is closed again, which only seals it. Runs
    under the store's lease (waiting up to ``wait_s`` for it); if another process keeps it,
    this run does nothing and says so (``locked_out``): that process closes, or the next run.
    """
    if now.tzinfo is None:
        raise ValueError("now must carry a timezone")
    try:
        with hold(store, "scheduler close", wait_s=wait_s) as lease:
            return _close_due(store, closer, now, signing_key, lease)
    except LeaseHeld as exc:
        log.warning("%s; this run leaves it to them", exc)
        return CloseRun(now, (), (), locked_out=True)


def _close_due(store: Store, closer: Closer, now: datetime, signing_key: Path | None, lease: Lease) -> CloseRun:
    sealed = set(sealed_periods(store))
    # a close that stopped after its ledgers but before its seal: closing again seals it
    half_closed = [p for p in ledger_periods(store) if p not in sealed]
    due = sorted(set(closer.due_months(store, now)) | set(half_closed))
    closed, skipped = [], []
    for period in due:
        if period in sealed:
            skipped.append(period)
            continue
        log.info("closing %s (due at %s)", period, now.isoformat())
        closer.close_month(store, period, signing_key=signing_key, lease=lease)
        closed.append(period)
    return CloseRun(now, tuple(due), tuple(closed), tuple(skipped))


@dataclass(frozen=True, slots=True)
class UpkeepRun:
    """What one run of the hourly upkeep did (``locked_out``: a close held the lease)."""

    now: datetime
    compacted: tuple[CompactionResult, ...] = ()
    vacuumed: dict[str, int] = field(default_factory=dict)
    locked_out: bool = False


def run_compaction(store: Store, now: datetime, *, retention_hours: int = 24) -> UpkeepRun:
    """The hourly upkeep, under the store's lease: roll ``usage_hourly`` up from ``raw``,
    compact ``raw`` and ``quarantine`` (closed days by target size; today's raw is left as
    appended: :func:`storage.compaction.compact_dataset`), delete replaced files older
    than ``retention_hours`` (never a sealed one). Skips the hour if the lease is held."""
    try:
        with hold(store, "scheduler upkeep") as lease:
            return _upkeep(store, now, lease, retention_hours)
    except LeaseHeld as exc:
        log.info("hourly upkeep skipped: %s", exc)
        return UpkeepRun(now, locked_out=True)


def _upkeep(store: Store, now: datetime, lease: Lease, retention_hours: int) -> UpkeepRun:
    roll_up(store, lease=lease)
    results: list[CompactionResult] = []
    today = now.astimezone(KST).date().isoformat()  # today's raw stays as appended until it closes
    for dataset in COMPACTABLE:
        lease.check()
        results.extend(compact_dataset(store, dataset, before_date=today, lease=lease))
    kst = now.astimezone(KST)
    last_month = (kst.replace(day=1) - timedelta(days=1)).strftime("%Y-%m")
    # every period once a day (the 03:00 KST run), this month and the last one every hour
    periods = None if kst.hour == FULL_VACUUM_HOUR_KST else {kst.strftime("%Y-%m"), last_month}
    vacuumed = vacuum(store, retention_hours=retention_hours, lease=lease, periods=periods)
    return UpkeepRun(now, tuple(results), vacuumed)


# -- the stored jobs (module-level, referenced by name, plain arguments) --------------------
def monthly_close_job(
    data_dir: str,
    registry: str,
    signing_key: str | None = None,
    clock_ref: str = DEFAULT_CLOCK,
    closer_ref: str = DEFAULT_CLOSER,
) -> list[str]:
    clock = resolve_clock(clock_ref)
    run = run_due_closes(
        Store(data_dir),
        ref_to_obj(closer_ref)(Path(registry)),
        clock(),
        signing_key=Path(signing_key) if signing_key else None,
        wait_s=CLOSE_WAIT_S,
    )
    return list(run.closed)


def compaction_job(data_dir: str, clock_ref: str = DEFAULT_CLOCK) -> int:
    clock = resolve_clock(clock_ref)
    return len(run_compaction(Store(data_dir), clock()).compacted)


def compliance_snapshot_job(data_dir: str, registry: str, clock_ref: str = DEFAULT_CLOCK) -> str:
    from accounting.registry import load_registry

    store = Store(data_dir)
    return compliance_snapshot(store, load_registry(Path(registry)), resolve_clock(clock_ref)())


def compliance_snapshot(store: Store, registry: Registry, now: datetime) -> str:
    """The compliance view of the month to date, as of the KST day before ``now``; its path.

    Written to ``snapshots/compliance/period=YYYY-MM/as_of=YYYY-MM-DD.parquet`` (schema
    ``accounting.schemas.COMPLIANCE``, computed by :func:`accounting.compliance.compliance_rows`
    like the close does). Capacity is the whole month's, so coverage grows through the month;
    a snapshot is a progress view, never a ledger, and is not sealed. Re-running it for the
    same day overwrites the same file.
    """
    from accounting.compliance import compliance_rows
    from accounting.usage import parse_month, quarantined, scan_month, with_kst_calendar

    if now.tzinfo is None:
        raise ValueError("now must carry a timezone")
    as_of = (now.astimezone(KST) - timedelta(days=1)).date()
    period = as_of.strftime("%Y-%m")
    hourly, oversubscribed = scan_month(store, period)
    rows = compliance_rows(
        parse_month(period), registry, with_kst_calendar(hourly), oversubscribed, quarantined(store, period)
    )
    table = pa.Table.from_pylist([r.as_row() for r in rows], schema=COMPLIANCE) if rows else COMPLIANCE.empty_table()
    path = store.path(SNAPSHOT_DIR, f"period={period}", f"as_of={as_of.isoformat()}.parquet")
    store.write_parquet_atomic(path, table)
    return path


# -- the scheduler --------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ScheduleConfig:
    data_dir: Path
    registry: Path
    signing_key: Path | None = None
    clock_ref: str = DEFAULT_CLOCK
    closer_ref: str = DEFAULT_CLOSER
    close_hour: int = 1
    close_minute: int = 0
    timezone: ZoneInfo = KST


def data_dir_text(data_dir: Path | str) -> str:
    """The data dir as jobs store it: an ``s3://`` URL kept as a URL, a local path made absolute."""
    text = str(data_dir)
    if text.startswith("s3:/"):
        return "s3://" + text[len("s3:/"):].lstrip("/")
    return str(Path(text).absolute())


def job_store_url(data_dir: Path) -> str:
    path = (Path(data_dir) / JOB_STORE).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def configure(
    scheduler: BaseScheduler,
    config: ScheduleConfig,
    *,
    triggers: dict[str, BaseTrigger] | None = None,
) -> BaseScheduler:
    """Add the job store and the three jobs (fixed ids, replaced on restart, never doubled).

    Every job has ``coalesce=True``, ``misfire_grace_time=None`` and one instance at a time;
    the close does not depend on that (it looks up what is due) but it avoids a burst of
    catch-up runs. ``triggers`` overrides a job's trigger by id (tests fire them quickly).
    """
    tz = config.timezone
    chosen: dict[str, BaseTrigger] = {
        COMPACTION_ID: CronTrigger(minute=5, timezone=tz),
        SNAPSHOT_ID: CronTrigger(hour=0, minute=30, timezone=tz),
        MONTHLY_CLOSE_ID: CronTrigger(day=1, hour=config.close_hour, minute=config.close_minute, timezone=tz),
    }
    chosen.update(triggers or {})
    data_dir = data_dir_text(config.data_dir)
    # jobs have fixed ids and are added again at every start, and the close finds what is due by
    # itself: the SQLite store only spares a restart the re-adding. On S3 there is no local data
    # dir to put it in (and nothing to share), so the jobs live in memory.
    store = MemoryJobStore() if data_dir.startswith("s3://") else SQLAlchemyJobStore(url=job_store_url(config.data_dir))
    scheduler.configure(
        jobstores={"default": store},
        job_defaults={"coalesce": True, "misfire_grace_time": None, "max_instances": 1},
        timezone=tz,
    )
    for func_ref, job_id, name, kwargs in _jobs(config, data_dir):
        scheduler.add_job(func_ref, chosen[job_id], id=job_id, name=name, kwargs=kwargs, replace_existing=True)
    return scheduler


def _jobs(config: ScheduleConfig, data_dir: str) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(function reference, job id, name, keyword arguments) of the three jobs, in the order
    they are added. Arguments are plain text: the SQLite job store pickles them."""
    registry = str(Path(config.registry).absolute())
    return [
        (
            "accounting.scheduler:compaction_job",
            COMPACTION_ID,
            "hourly upkeep: roll usage_hourly up from raw/, compact raw/ and quarantine/, vacuum",
            {"data_dir": data_dir, "clock_ref": config.clock_ref},
        ),
        (
            "accounting.scheduler:compliance_snapshot_job",
            SNAPSHOT_ID,
            "daily compliance snapshot",
            {"data_dir": data_dir, "registry": registry, "clock_ref": config.clock_ref},
        ),
        (
            "accounting.scheduler:monthly_close_job",
            MONTHLY_CLOSE_ID,
            "monthly close (every due month, exactly once)",
            {
                "data_dir": data_dir,
                "registry": registry,
                "signing_key": str(Path(config.signing_key).absolute()) if config.signing_key else None,
                "clock_ref": config.clock_ref,
                "closer_ref": config.closer_ref,
            },
        ),
    ]


def catch_up(config: ScheduleConfig) -> CloseRun:
    """The close run done at start: closes what was missed while the scheduler was down."""
    clock = resolve_clock(config.clock_ref)
    return run_due_closes(
        Store(config.data_dir),
        ref_to_obj(config.closer_ref)(Path(config.registry)),
        clock(),
        signing_key=config.signing_key,
        wait_s=CLOSE_WAIT_S,
    )


def serve(
    config: ScheduleConfig,
    *,
    on_start: Callable[[CloseRun], None] | None = None,
    on_job_end: Callable[[str, bool, object], None] | None = None,
) -> None:
    """Catch up, then run the :class:`BlockingScheduler` until interrupted (``gpuledger schedule``).

    ``on_job_end(job_id, ok, result)`` hears every job run end (the scheduler's metrics).
    """
    from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED
    from apscheduler.schedulers.blocking import BlockingScheduler

    run = catch_up(config)
    if on_start is not None:
        on_start(run)
    scheduler = configure(BlockingScheduler(), config)
    if on_job_end is not None:
        scheduler.add_listener(
            lambda e: on_job_end(e.job_id, e.exception is None, e.retval), EVENT_JOB_EXECUTED | EVENT_JOB_ERROR
        )
    try:
        scheduler.start()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        if scheduler.running:
            scheduler.shutdown(wait=True)


__all__ = [
    "CloseRun",
    "Closer",
    "RegistryCloser",
    "ScheduleConfig",
    "catch_up",
    "compliance_snapshot",
    "UpkeepRun",
    "configure",
    "run_compaction",
    "run_due_closes",
    "serve",
]
