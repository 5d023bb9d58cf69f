"""The compliance ledger: per period × entity × GPU model, what was allocated, used and lost.

The breakdown follows ``sreport cluster utilization`` (allocated / down / idle):

* ``capacity_gpu_hours`` = Σ over the month's KST days of GPUs allocated that day × 24;
  ``allocated_gpus`` is the most GPUs held on any day of the month;
* ``reported`` = all telemetry received (attributed + unattributed); ``busy`` its
  utilisation-weighted part; ``idle`` = reported − busy;
* ``unreported`` = capacity − reported, never below 0 (allocated but silent: down, or no
  collector);
* ``quarantined`` = GPU-time refused (unknown entity or project …) and not yet replayed;
* ``utilisation`` = busy / reported, ``coverage`` = reported / capacity, 6 places half-even,
  null when the denominator is 0 (nothing is zero-filled).

Breaches (:class:`Breach`): ``over_allocation`` (in some hour, more GPU-hours reported than
GPUs allocated that day), ``under_use`` (utilisation below the registry threshold),
``low_coverage`` (coverage below the threshold), ``unregistered_entity`` and
``unregistered_project`` (quarantine reasons ``unknown_entity``; ``unknown_project`` /
``project_of_other_entity``), ``gpu_oversubscribed`` (a physical GPU-hour in which the
GPU's devices reported more GPU-time than the wall clock had, in an interval or in the hour:
the excess is taken off before anything here is counted, see :mod:`accounting.wallclock`). The national roll-up (entity ``ALL``) sums every entity;
its threshold breaches are judged on the national totals, the other breaches are the union
of the entities'.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from enum import StrEnum

import polars as pl

from accounting.billing import gpu_hours
from accounting.registry import NATIONAL, UNATTRIBUTED, Registry
from accounting.usage import MICROSECONDS_PER_HOUR, Month

_SIX = Decimal("0.000001")


class Breach(StrEnum):
    OVER_ALLOCATION = "over_allocation"
    UNDER_USE = "under_use"
    LOW_COVERAGE = "low_coverage"
    UNREGISTERED_ENTITY = "unregistered_entity"
    UNREGISTERED_PROJECT = "unregistered_project"
    GPU_OVERSUBSCRIBED = "gpu_oversubscribed"


_THRESHOLD_BREACHES = {Breach.UNDER_USE, Breach.LOW_COVERAGE}
_REASON_BREACH = {
    "unknown_entity": Breach.UNREGISTERED_ENTITY,
    "unknown_project": Breach.UNREGISTERED_PROJECT,
    "project_of_other_entity": Breach.UNREGISTERED_PROJECT,
}


@dataclass(frozen=True, slots=True)
class ComplianceRow:
    period: str
    entity: str
    gpu_model: str
    allocated_gpus: int
    capacity_microseconds: int
    reported_microseconds: int
    attributed_microseconds: int
    busy_microseconds: int
    quarantined_microseconds: int
    breaches: tuple[str, ...]

    @property
    def unattributed_microseconds(self) -> int:
        return self.reported_microseconds - self.attributed_microseconds

    @property
    def idle_microseconds(self) -> int:
        return self.reported_microseconds - self.busy_microseconds

    @property
    def unreported_microseconds(self) -> int:
        return max(self.capacity_microseconds - self.reported_microseconds, 0)

    @property
    def utilisation(self) -> Decimal | None:
        return _ratio(self.busy_microseconds, self.reported_microseconds)

    @property
    def coverage(self) -> Decimal | None:
        return _ratio(self.reported_microseconds, self.capacity_microseconds)

    def as_row(self) -> dict[str, object]:
        return {
            "period": self.period,
            "entity": self.entity,
            "gpu_model": self.gpu_model,
            "allocated_gpus": self.allocated_gpus,
            "capacity_gpu_hours": gpu_hours(self.capacity_microseconds),
            "reported_gpu_hours": gpu_hours(self.reported_microseconds),
            "attributed_gpu_hours": gpu_hours(self.attributed_microseconds),
            "unattributed_gpu_hours": gpu_hours(self.unattributed_microseconds),
            "busy_gpu_hours": gpu_hours(self.busy_microseconds),
            "idle_gpu_hours": gpu_hours(self.idle_microseconds),
            "unreported_gpu_hours": gpu_hours(self.unreported_microseconds),
            "quarantined_gpu_hours": gpu_hours(self.quarantined_microseconds),
            "utilisation": self.utilisation,
            "coverage": self.coverage,
            "breaches": list(self.breaches),
        }


def _ratio(numerator: int, denominator: int) -> Decimal | None:
    if denominator <= 0:
        return None
    with localcontext() as ctx:
        ctx.prec = 60
        return (Decimal(numerator) / Decimal(denominator)).quantize(_SIX, rounding=ROUND_HALF_EVEN)


def compliance_rows(
    month: Month,
    registry: Registry,
    hourly: pl.DataFrame,
    oversubscribed: pl.DataFrame,
    quarantine: pl.DataFrame,
) -> list[ComplianceRow]:
    """The month's rows per entity × GPU model plus the national roll-up, sorted.

    ``hourly``: the month's usage per ``hour_start`` × entity × project × GPU model (with KST
    ``date``); ``oversubscribed``: GPU-hours over wall-clock per entity × model;
    ``quarantine``: quarantined GPU-time per entity × model × reason (not yet replayed).
    """
    capacity, allocated_max = _capacity(month, registry)
    usage = _usage_sums(hourly)
    breaches: dict[tuple[str, str], set[Breach]] = {}
    for key in _over_allocated(hourly, registry):
        breaches.setdefault(key, set()).add(Breach.OVER_ALLOCATION)
    for row in oversubscribed.iter_rows(named=True):
        if row["oversubscribed_gpu_hours"]:
            breaches.setdefault((row["entity"], row["gpu_model"]), set()).add(Breach.GPU_OVERSUBSCRIBED)
    quarantined: dict[tuple[str, str], int] = {}
    for row in quarantine.iter_rows(named=True):
        key = (row["entity"], row["gpu_model"])
        quarantined[key] = quarantined.get(key, 0) + int(row["gpu_microseconds"])
        breach = _REASON_BREACH.get(row["reason_code"])
        if breach is not None:
            breaches.setdefault(key, set()).add(breach)

    rows = []
    for key in sorted(set(capacity) | set(usage) | set(quarantined) | set(breaches)):
        used = usage.get(key, {"reported": 0, "attributed": 0, "busy": 0})
        row = ComplianceRow(
            period=month.period,
            entity=key[0],
            gpu_model=key[1],
            allocated_gpus=allocated_max.get(key, 0),
            capacity_microseconds=capacity.get(key, 0),
            reported_microseconds=int(used["reported"] or 0),
            attributed_microseconds=int(used["attributed"] or 0),
            busy_microseconds=int(used["busy"] or 0),
            quarantined_microseconds=quarantined.get(key, 0),
            breaches=tuple(sorted(breaches.get(key, set()))),
        )
        rows.append(_judge(row, registry))
    return rows + _national(month, rows, registry)


def _capacity(month: Month, registry: Registry) -> tuple[dict[tuple[str, str], int], dict[tuple[str, str], int]]:
    """Per entity × model: allocated GPU-µs over the month's KST days, and the most GPUs on any day."""
    days = [month.first_day + timedelta(days=i) for i in range(month.days)]
    capacity: dict[tuple[str, str], int] = {}
    allocated_max: dict[tuple[str, str], int] = {}
    for entity in registry.entities.values():
        for model in sorted({a.gpu_model for a in entity.allocations}):
            counts = [entity.allocated(model, d) for d in days]
            if any(counts):
                capacity[(entity.name, model)] = sum(counts) * 24 * MICROSECONDS_PER_HOUR
                allocated_max[(entity.name, model)] = max(counts)
    return capacity, allocated_max


def _usage_sums(hourly: pl.DataFrame) -> dict[tuple[str, str], dict]:
    """Reported, attributed (a registered project) and busy GPU-µs per entity × model."""
    sums = (
        hourly.group_by(["entity", "gpu_model"])
        .agg(
            reported=pl.col("gpu_microseconds").sum(),
            attributed=pl.col("gpu_microseconds").filter(pl.col("project") != UNATTRIBUTED).sum(),
            busy=pl.col("busy_gpu_microseconds").sum(),
        )
        .sort(["entity", "gpu_model"])
    )
    return {(r["entity"], r["gpu_model"]): r for r in sums.iter_rows(named=True)}


def _over_allocated(hourly: pl.DataFrame, registry: Registry) -> set[tuple[str, str]]:
    """Entity × model with an hour whose GPU-time exceeds the GPUs allocated that KST day."""
    per_hour = hourly.group_by(["entity", "gpu_model", "date", "hour_start"]).agg(pl.col("gpu_microseconds").sum())
    over = set()
    for row in per_hour.sort(["entity", "gpu_model", "hour_start"]).iter_rows(named=True):
        entity = registry.entities.get(row["entity"])
        allowed = entity.allocated(row["gpu_model"], row["date"]) if entity else 0
        if row["gpu_microseconds"] > allowed * MICROSECONDS_PER_HOUR:
            over.add((row["entity"], row["gpu_model"]))
    return over


def _judge(row: ComplianceRow, registry: Registry) -> ComplianceRow:
    """Add the threshold breaches (under-use, low coverage) judged on the row's own figures."""
    found = {Breach(b) for b in row.breaches}
    utilisation, coverage = row.utilisation, row.coverage
    if utilisation is not None and utilisation < registry.thresholds.under_use_below:
        found.add(Breach.UNDER_USE)
    if coverage is not None and coverage < registry.thresholds.low_coverage_below:
        found.add(Breach.LOW_COVERAGE)
    return ComplianceRow(
        row.period,
        row.entity,
        row.gpu_model,
        row.allocated_gpus,
        row.capacity_microseconds,
        row.reported_microseconds,
        row.attributed_microseconds,
        row.busy_microseconds,
        row.quarantined_microseconds,
        tuple(sorted(b.value for b in found)),
    )


def _national(month: Month, rows: list[ComplianceRow], registry: Registry) -> list[ComplianceRow]:
    out = []
    for model in sorted({r.gpu_model for r in rows}):
        part = [r for r in rows if r.gpu_model == model]
        carried = {b for r in part for b in r.breaches if Breach(b) not in _THRESHOLD_BREACHES}
        total = ComplianceRow(
            period=month.period,
            entity=NATIONAL,
            gpu_model=model,
            allocated_gpus=sum(r.allocated_gpus for r in part),
            capacity_microseconds=sum(r.capacity_microseconds for r in part),
            reported_microseconds=sum(r.reported_microseconds for r in part),
            attributed_microseconds=sum(r.attributed_microseconds for r in part),
            busy_microseconds=sum(r.busy_microseconds for r in part),
            quarantined_microseconds=sum(r.quarantined_microseconds for r in part),
            breaches=tuple(sorted(carried)),
        )
        out.append(_judge(total, registry))
    return out
