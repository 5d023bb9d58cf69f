"""Billing lines: exact decimal pricing of usage, and corrections of closed periods.

A line is one period × entity × project × GPU model × rate segment × charge class. Its amount
is ``gpu_microseconds × rate / 3_600_000_000`` computed exactly and rounded **once** by the
registry's rule; ``gpu_hours`` is only the readable form (6 places, half-even) and never
feeds the amount.

Corrections (STYLE.md 6: late data is a business event). At each close, every earlier period
is re-priced from the usage there is *now*; per line key, what was billed so far (the usage
line plus any earlier corrections) is subtracted, and a non-zero difference becomes a
``correction`` line with ``corrects_period`` set. The correction's amount is
``round(restated exact amount) − amount billed so far``, so after any number of restatements
the sum of a key's lines is exactly what one close over all the data would have billed, and
restating twice never double counts. ``unattributed`` usage is never billed.

Usage reaches pricing already within the wall clock (DESIGN.md invariant 2): GPU-time a
physical GPU's devices reported beyond it was taken off by :mod:`accounting.wallclock`, in
proportion and exact to the microsecond, for the usage period and for every restatement.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from enum import StrEnum

import polars as pl

from accounting.errors import CloseError
from accounting.registry import UNATTRIBUTED, Registry, RoundingRule
from accounting.usage import MICROSECONDS_PER_HOUR, parse_month

_HOUR = Decimal(MICROSECONDS_PER_HOUR)
_SIX = Decimal("0.000001")


class ChargeClass(StrEnum):
    USAGE = "usage"
    CORRECTION = "correction"


@dataclass(frozen=True, slots=True, order=True)
class LineKey:
    """What makes two pieces of usage the same billing line (apart from the charge class)."""

    usage_period: str
    entity: str
    project: str
    project_class: str
    gpu_model: str
    rate_from: date
    rate_to: date
    list_rate_krw_per_gpu_hour: Decimal
    discount_percent: Decimal
    rate_krw_per_gpu_hour: Decimal


@dataclass(frozen=True, slots=True)
class BillingLine:
    period: str
    key: LineKey
    charge_class: ChargeClass
    gpu_microseconds: int
    amount_krw: Decimal

    @property
    def corrects_period(self) -> str | None:
        return self.key.usage_period if self.charge_class is ChargeClass.CORRECTION else None

    @property
    def gpu_hours(self) -> Decimal:
        return gpu_hours(self.gpu_microseconds)

    def as_row(self) -> dict[str, object]:
        k = self.key
        return {
            "period": self.period,
            "entity": k.entity,
            "project": k.project,
            "project_class": k.project_class,
            "gpu_model": k.gpu_model,
            "charge_class": self.charge_class.value,
            "corrects_period": self.corrects_period,
            "rate_from": k.rate_from,
            "rate_to": k.rate_to,
            "gpu_microseconds": self.gpu_microseconds,
            "gpu_hours": self.gpu_hours,
            "list_rate_krw_per_gpu_hour": k.list_rate_krw_per_gpu_hour,
            "discount_percent": k.discount_percent,
            "rate_krw_per_gpu_hour": k.rate_krw_per_gpu_hour,
            "amount_krw": self.amount_krw,
        }


@dataclass(frozen=True, slots=True)
class Billed:
    """What earlier closes billed for one key: usage plus corrections."""

    gpu_microseconds: int
    amount_krw: Decimal


def gpu_hours(microseconds: int) -> Decimal:
    """Integer GPU-microseconds as GPU-hours to 6 places (half-even): for display only."""
    with localcontext() as ctx:
        ctx.prec = 60
        return (Decimal(microseconds) / _HOUR).quantize(_SIX, rounding=ROUND_HALF_EVEN)


def exact_amount(microseconds: int, rate: Decimal, rounding: RoundingRule) -> Decimal:
    """``microseconds × rate / 3.6e9`` exactly, then the registry's rounding once."""
    with localcontext() as ctx:
        ctx.prec = 60
        return rounding.apply(Decimal(microseconds) * rate / _HOUR)


def price_usage(daily: pl.DataFrame, registry: Registry) -> dict[LineKey, int]:
    """Billable usage per line key.

    ``daily`` has ``period``, ``date`` (KST), ``entity``, ``project``, ``gpu_model`` and
    ``gpu_microseconds``. Each day's usage goes to the rate card in force that day; the
    line's ``rate_from``/``rate_to`` are that card's days within the usage month. Raises
    :class:`CloseError` listing every entity × model × day that has usage but no rate.
    """
    totals: dict[LineKey, int] = {}
    gaps: dict[tuple[str, str], list[date]] = {}
    segments_cache: dict[tuple[str, str, str], list] = {}
    billable = daily.filter(pl.col("project") != UNATTRIBUTED)
    for row in billable.iter_rows(named=True):
        period, entity, model, day = row["period"], row["entity"], row["gpu_model"], row["date"]
        cache_key = (period, entity, model)
        if cache_key not in segments_cache:
            month = parse_month(period)
            segments_cache[cache_key] = registry.rate_segments(entity, model, month.first_day, month.last_day)
        found = [(c, lo, hi) for c, lo, hi in segments_cache[cache_key] if lo <= day <= hi]
        if not found:
            gaps.setdefault((entity, model), []).append(day)
            continue
        card, lo, hi = found[0]
        klass = registry.project_class(row["project"])
        key = normalise_key(LineKey(
            usage_period=period,
            entity=entity,
            project=row["project"],
            project_class=klass,
            gpu_model=model,
            rate_from=lo,
            rate_to=hi,
            list_rate_krw_per_gpu_hour=card.krw_per_gpu_hour,
            discount_percent=card.discount_percent(klass),
            rate_krw_per_gpu_hour=card.applied_rate(klass),
        ))
        totals[key] = totals.get(key, 0) + int(row["gpu_microseconds"])
    if gaps:
        listing = "; ".join(
            f"{entity} × {model} on {_days(days)}" for (entity, model), days in sorted(gaps.items())
        )
        raise CloseError(f"{registry.source}: usage without a rate card (amend the registry): {listing}")
    return totals


def billing_lines(
    period: str,
    priced: Mapping[LineKey, int],
    billed: Mapping[LineKey, Billed],
    rounding: RoundingRule,
) -> list[BillingLine]:
    """Usage lines of ``period`` and correction lines of earlier periods, sorted."""
    lines: list[BillingLine] = []
    for key in sorted(set(priced) | set(billed)):
        if key.usage_period > period:
            continue
        now_us = priced.get(key, 0)
        if key.usage_period == period:
            if now_us:
                amount = exact_amount(now_us, key.rate_krw_per_gpu_hour, rounding)
                lines.append(BillingLine(period, key, ChargeClass.USAGE, now_us, amount))
            continue
        before = billed.get(key, Billed(0, Decimal(0)))
        delta_us = now_us - before.gpu_microseconds
        delta_amount = exact_amount(now_us, key.rate_krw_per_gpu_hour, rounding) - before.amount_krw
        if delta_us or delta_amount:
            lines.append(BillingLine(period, key, ChargeClass.CORRECTION, delta_us, delta_amount))
    return sorted(lines, key=_line_order)


def billed_so_far(rows: Iterable[Mapping[str, object]]) -> dict[LineKey, Billed]:
    """Sum earlier billing ledger rows (pyarrow ``to_pylist`` dicts) per line key."""
    billed: dict[LineKey, Billed] = {}
    for row in rows:
        key = LineKey(
            usage_period=str(row["corrects_period"] or row["period"]),
            entity=str(row["entity"]),
            project=str(row["project"]),
            project_class=str(row["project_class"]),
            gpu_model=str(row["gpu_model"]),
            rate_from=row["rate_from"],  # type: ignore[arg-type]
            rate_to=row["rate_to"],  # type: ignore[arg-type]
            list_rate_krw_per_gpu_hour=_norm(row["list_rate_krw_per_gpu_hour"]),
            discount_percent=_norm(row["discount_percent"]),
            rate_krw_per_gpu_hour=_norm(row["rate_krw_per_gpu_hour"]),
        )
        prev = billed.get(key, Billed(0, Decimal(0)))
        billed[key] = Billed(
            prev.gpu_microseconds + int(row["gpu_microseconds"]),  # type: ignore[call-overload]
            prev.amount_krw + Decimal(row["amount_krw"]),  # type: ignore[arg-type]
        )
    return billed


def normalise_key(key: LineKey) -> LineKey:
    """A key with its decimals in canonical form (so ``3900`` and ``3900.00`` are one key)."""
    return LineKey(
        key.usage_period,
        key.entity,
        key.project,
        key.project_class,
        key.gpu_model,
        key.rate_from,
        key.rate_to,
        _norm(key.list_rate_krw_per_gpu_hour),
        _norm(key.discount_percent),
        _norm(key.rate_krw_per_gpu_hour),
    )


def _norm(value: object) -> Decimal:
    return Decimal(str(value)).quantize(Decimal("0.01"))


def _line_order(line: BillingLine) -> tuple:
    k = line.key
    return (k.entity, k.project, k.gpu_model, line.charge_class.value, k.usage_period, k.rate_from, k.rate_to, k.rate_krw_per_gpu_hour)


def _days(days: list[date]) -> str:
    unique = sorted(set(days))
    if len(unique) == 1:
        return str(unique[0])
    return f"{unique[0]} … {unique[-1]} ({len(unique)} days)"

