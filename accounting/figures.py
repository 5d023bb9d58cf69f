"""What every human-facing output says about a closed month, in one vocabulary.

The summary printed by ``close``/``demo``, the HTML report, the finance statements (XLSX and
CSV) and ``docs/finance.md`` use these words and these sums, so a figure has one name and one
value wherever a person meets it (:data:`TERMS`):

    capacity   = allocated GPUs × hours of the month
    reported   = busy + idle = attributed + unattributed        (telemetry received)
    unreported = capacity − reported                             (down, silent, no collector)
    billed     = the billing ledger's GPU-hours (attributed usage + corrections)
    amount     = Σ of the ledger lines' whole-won amounts         (the billing truth)

Hours sums are exact: :func:`entity_figures` adds the ledger's decimals, and billed GPU-hours
come from the lines' exact GPU-microseconds rounded once (half-even, 6 places), which is the
figure the period's manifest seals, never a sum of already-rounded line hours.

One precision for what a person reads (the CLI summary, the report, the statements in XLSX and
PDF, ``summary.csv``): **money in whole won** (the ledger's amounts, each line rounded once by
the registry's rule; totals are sums of lines, never re-rounded) and **GPU-hours to 2 places**
(0.01 h = 36 GPU-seconds), half-even, rounded once: billed hours from the exact
GPU-microseconds (:func:`shown_billed_hours`), compliance hours from the ledger's figure
(:func:`shown_hours`). Machine files (the ledgers, the manifest, the statement CSVs of ledger
lines, the auditor README) keep the ledger's 6 places.

It also says whether a data directory holds simulated data (:func:`is_simulated`: the demo's
marker file), and gives a period's KST span and a statement's number (from the manifest hash).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time, timedelta
from decimal import ROUND_FLOOR, ROUND_HALF_EVEN, Decimal, localcontext
from typing import Any

import polars as pl

from accounting.billing import gpu_hours
from accounting.registry import NATIONAL, Registry
from accounting.usage import parse_month
from storage.dataset import Store

SIMULATED_MARKER = ".gpuledger-demo"  # written by ``gpuledger demo`` at the data dir's root
NATIONAL_LABEL = "전국 합계 (all entities)"

# The one vocabulary (summary, report, statements, CSV, docs/finance.md): key, 한국어, English, definition.
TERMS: tuple[tuple[str, str, str, str], ...] = (
    ("capacity", "할당 용량", "capacity", "할당된 GPU 수 × 그 달의 시간 (allocated GPUs × hours of the month)"),
    ("reported", "보고", "reported", "수집기가 보고한 GPU·시간 = 가동 + 유휴 = 귀속 + 미귀속 (telemetry received)"),
    ("busy", "가동", "busy", "보고 중 GPU가 실제로 일한 부분, 활용도로 가중 (utilisation-weighted)"),
    ("idle", "유휴", "idle", "보고 − 가동: 켜져 있었으나 일하지 않음 (reported − busy)"),
    ("attributed", "귀속", "attributed", "작업(job)과 등록된 프로젝트에 연결된 보고 GPU·시간: 청구 대상"),
    ("unattributed", "미귀속 (청구 제외)", "unattributed (not billed)",
     "작업을 찾지 못한 보고 GPU·시간: 집계되지만 청구되지 않음"),
    ("unreported", "미보고", "unreported", "할당 용량 − 보고: 장애, 정지 또는 수집기 없음 (down or silent)"),
    ("utilisation", "활용률", "utilisation", "가동 ÷ 보고 (busy ÷ reported)"),
    ("coverage", "보고율", "coverage", "보고 ÷ 할당 용량 (reported ÷ capacity)"),
    ("billed", "청구 GPU·시간", "billed GPU-hours", "청구 원장의 GPU·시간 (귀속 사용분 + 정정분)"),
    ("amount", "청구액 (원)", "amount (KRW)", "청구 GPU·시간 × 적용 단가, 줄마다 등록부 규칙으로 원 단위 처리"),
)


@dataclass(frozen=True, slots=True)
class EntityFigures:
    entity: str
    allocated_gpus: int
    capacity_gpu_hours: Decimal
    reported_gpu_hours: Decimal
    busy_gpu_hours: Decimal
    idle_gpu_hours: Decimal
    unreported_gpu_hours: Decimal
    utilisation: Decimal | None
    coverage: Decimal | None
    breaches: tuple[str, ...]
    amount_krw: Decimal
    attributed_gpu_hours: Decimal = Decimal(0)
    unattributed_gpu_hours: Decimal = Decimal(0)
    billed_gpu_hours: Decimal = Decimal(0)  # Σ exact GPU-µs of the billing lines, rounded once
    display_name: str = ""
    billed_gpu_microseconds: int = 0  # the exact usage behind billed_gpu_hours

    @property
    def billed_hours_shown(self) -> Decimal:
        """Billed GPU-hours as every person-facing output shows them (2 places, from the µs)."""
        return shown_billed_hours(self.billed_gpu_microseconds)


def display_name(registry: Registry | None, entity: str) -> str:
    if entity == NATIONAL:
        return NATIONAL_LABEL
    known = registry.entities.get(entity) if registry is not None else None
    return known.display_name if known is not None else entity


def entity_figures(
    compliance: pl.DataFrame, billing: pl.DataFrame, registry: Registry | None = None
) -> list[EntityFigures]:
    """Per-entity figures summed over GPU models (exact decimals); the national row last."""
    amounts: dict[str, Decimal] = {}
    micros: dict[str, int] = {}
    for entity, amount, us in billing.select("entity", "amount_krw", "gpu_microseconds").iter_rows():
        for key in (entity, NATIONAL):
            amounts[key] = amounts.get(key, Decimal(0)) + amount
            micros[key] = micros.get(key, 0) + int(us)
    sums: dict[str, dict[str, Any]] = {}
    for row in compliance.iter_rows(named=True):
        acc = sums.setdefault(row["entity"], _empty())
        acc["gpus"] += row["allocated_gpus"] or 0
        for key, column in _SUMMED.items():
            acc[key] += row[column] or 0
        acc["breaches"].update(row["breaches"] or [])
    for entity in amounts:  # billed but absent from compliance: still on the report
        if entity != NATIONAL:
            sums.setdefault(entity, _empty())
    if NATIONAL not in sums:  # a ledger without the national roll-up: sum the entities
        national = _empty()
        for acc in sums.values():
            national["gpus"] += acc["gpus"]
            for key in _SUMMED:
                national[key] += acc[key]
            national["breaches"].update(acc["breaches"])
        sums[NATIONAL] = national
    out = []
    for entity in sorted(sums, key=lambda e: (e == NATIONAL, e)):
        acc = sums[entity]
        out.append(
            EntityFigures(
                entity=entity,
                allocated_gpus=acc["gpus"],
                capacity_gpu_hours=acc["cap"],
                reported_gpu_hours=acc["rep"],
                busy_gpu_hours=acc["busy"],
                idle_gpu_hours=acc["idle"],
                unreported_gpu_hours=acc["unrep"],
                utilisation=_ratio(acc["busy"], acc["rep"]),
                coverage=_ratio(acc["rep"], acc["cap"]),
                breaches=tuple(sorted(acc["breaches"])),
                amount_krw=amounts.get(entity, Decimal(0)),
                attributed_gpu_hours=acc["attr"],
                unattributed_gpu_hours=acc["unattr"],
                billed_gpu_hours=gpu_hours(micros.get(entity, 0)),
                display_name=display_name(registry, entity),
                billed_gpu_microseconds=micros.get(entity, 0),
            )
        )
    return out


_SUMMED = {
    "cap": "capacity_gpu_hours",
    "rep": "reported_gpu_hours",
    "attr": "attributed_gpu_hours",
    "unattr": "unattributed_gpu_hours",
    "busy": "busy_gpu_hours",
    "idle": "idle_gpu_hours",
    "unrep": "unreported_gpu_hours",
}


def _empty() -> dict[str, Any]:
    acc: dict[str, Any] = {key: Decimal(0) for key in _SUMMED}
    acc["gpus"] = 0
    acc["breaches"] = set()
    return acc


def _ratio(numerator: Decimal, denominator: Decimal) -> Decimal | None:
    if not denominator:
        return None
    return (numerator / denominator).quantize(Decimal("0.000001"))


def is_simulated(store: Store) -> bool:
    """True when the data directory was made by ``gpuledger demo`` (simulated fleet, not real usage)."""
    return store.exists(store.path(SIMULATED_MARKER))


def kst_span(period: str) -> tuple[datetime, datetime]:
    """First instant and end (exclusive) of a KST month, as naive KST datetimes."""
    month = parse_month(period)
    start = datetime.combine(month.first_day, time())
    return start, datetime.combine(month.last_day + timedelta(days=1), time())


def statement_number(period: str, entity: str, manifest_sha256: str) -> str:
    """``GL-YYYYMM-<ENTITY>-<first 8 hex of the seal's hash>``: one per sealed month and entity.

    The hash given is the manifest's ``content_sha256`` (what is sealed, whatever bus or batches
    carried the events; the manifest file's SHA-256 for a month sealed before it existed).
    Re-exporting the same sealed month gives the same number; other sealed figures give another.
    """
    code = "".join(c if c.isalnum() else "-" for c in entity).upper()
    return f"GL-{period.replace('-', '')}-{code}-{manifest_sha256[:8].upper()}"


HOURS_SHOWN = Decimal("0.01")  # GPU-hours a person reads: 2 places (36 GPU-seconds)
_MICROS_PER_HOUR = Decimal(3_600_000_000)


def shown_hours(value: Decimal) -> Decimal:
    """A ledger's GPU-hours figure (6 places) at the precision a person reads (half-even)."""
    return value.quantize(HOURS_SHOWN, rounding=ROUND_HALF_EVEN)


def shown_billed_hours(microseconds: int) -> Decimal:
    """Exact GPU-microseconds as the GPU-hours a person reads, rounded once (never via 6 places)."""
    with localcontext() as ctx:
        ctx.prec = 60
        return (Decimal(microseconds) / _MICROS_PER_HOUR).quantize(HOURS_SHOWN, rounding=ROUND_HALF_EVEN)


def hours_text(value: Decimal | None) -> str:
    """``1,234.57``: GPU-hours as text, thousands separated (``-`` when there is no figure)."""
    return "-" if value is None else f"{shown_hours(value):,.2f}"


def won_text(value: Decimal) -> str:
    """``1,234,567``: whole won as text (the ledger's amounts are whole won already)."""
    if value != value.to_integral_value():
        raise ValueError(f"{value} is not whole won")
    return f"{value:,.0f}"


def small_hours_text(value: Decimal, hours_word: str = "GPU-hours", seconds_word: str = "GPU-seconds") -> str:
    """GPU-hours that may be a few seconds' worth: under one GPU-hour, the ledger's 6 places and the
    GPU-seconds too; otherwise 2 places.

    60 refused GPU-seconds are 0.016667 GPU-hours: "0.0 GPU-hours" would say nothing was refused,
    and "0.02" would say 72 seconds.
    """
    if value and abs(value) < 1:
        seconds = (value * 3600).quantize(Decimal(1), rounding=ROUND_HALF_EVEN)
        return f"{value.normalize():f} {hours_word} ({seconds:,} {seconds_word})"
    return f"{hours_text(value)} {hours_word}"


def apportion(total: Decimal, weights: list[Decimal]) -> list[Decimal]:
    """Split whole-won ``total`` over ``weights`` so the parts are whole won and sum to ``total``.

    Largest remainder: each part is floor(total × weight / Σ weights); the won left over go,
    one each, to the largest remainders (ties to the earlier weight). Used for the VAT shares of
    sub-account statements: rounding each share by itself could miss the entity's VAT by a won
    per sub-account. All-zero weights give all-zero parts (then ``total`` must be 0).
    """
    whole = sum(weights, Decimal(0))
    if not whole:
        if total:
            raise ValueError(f"cannot apportion {total} over zero weights")
        return [Decimal(0)] * len(weights)
    with localcontext() as ctx:
        ctx.prec = 60
        exact = [total * w / whole for w in weights]
    floors = [e.to_integral_value(rounding=ROUND_FLOOR) for e in exact]
    left = int(total - sum(floors, Decimal(0)))
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - floors[i]), i))
    for i in order[:left]:
        floors[i] += 1
    return floors


def pct(value: Decimal | None) -> str:
    return "–" if value is None else f"{value * 100:.1f}%"
