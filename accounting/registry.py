"""The registry: who holds which GPUs, which projects bill to whom, at what rate.

``registry.toml`` (see ``examples/registry.toml``) is read with :mod:`tomllib` (floats as
:class:`~decimal.Decimal`, so ``3412.50`` stays exact) into frozen dataclasses. It is
validated once, here, at the edge, and *every* problem is reported in one
:class:`~accounting.errors.RegistryError` that names the file.

Dates are KST calendar days. ``effective_from`` is the first day something applies,
``effective_to`` the last day (inclusive); a missing ``effective_to`` means open-ended.

Invariants the rest of accounting relies on (and that break billing if violated):

* an entity × GPU model has at most one allocation and one rate card on any day
  (periods never overlap), so a rate lookup is never ambiguous;
* every day an entity holds an allocation of a model, its pool has a rate for that model;
* every rate after discount is exact to 0.01 KRW, so the only rounding of money is the
  rule applied once per billing line;
* ``unattributed`` and ``ALL`` are reserved names (never a project / never an entity).

The parties of a Korean statement (거래명세서 / 청구서) are optional, so a registry without them
stays valid: ``[supplier]`` (공급자: name, 사업자등록번호, address, representative, the payment
account and the days to the due date), and on an entity or a project its 사업자등록번호,
address and representative as the recipient (공급받는자). A 사업자등록번호 given is checked
(``XXX-XX-XXXXX`` with its check digit); every problem is reported with the others.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import ROUND_DOWN, ROUND_HALF_EVEN, ROUND_HALF_UP, Decimal, InvalidOperation
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any

from accounting.errors import RegistryError

UNATTRIBUTED = "unattributed"  # the project of usage no job could be found for (never billed)
NATIONAL = "ALL"  # the entity of the national roll-up in the compliance ledger
COMMERCIAL = "commercial"  # the class of a project that declares none

_CENT = Decimal("0.01")
_HUNDRED = Decimal(100)


class RoundingRule(StrEnum):
    """How a billing line's exact amount becomes whole won (applied once per line)."""

    TRUNCATE = "truncate"  # towards zero: never bill a fraction of a won
    HALF_UP = "half_up"
    HALF_EVEN = "half_even"

    def apply(self, amount: Decimal) -> Decimal:
        mode = {
            RoundingRule.TRUNCATE: ROUND_DOWN,
            RoundingRule.HALF_UP: ROUND_HALF_UP,
            RoundingRule.HALF_EVEN: ROUND_HALF_EVEN,
        }[self]
        return amount.quantize(Decimal(1), rounding=mode)


@dataclass(frozen=True, slots=True)
class Period:
    """Days ``start`` … ``end`` inclusive; ``end is None`` means open-ended."""

    start: date
    end: date | None = None

    def overlaps(self, other: Period) -> bool:
        return (self.end is None or other.start <= self.end) and (
            other.end is None or self.start <= other.end
        )

    def clip(self, first: date, last: date) -> tuple[date, date] | None:
        """The part of this period within ``first`` … ``last`` (inclusive), or None."""
        lo = max(self.start, first)
        hi = last if self.end is None else min(self.end, last)
        return (lo, hi) if lo <= hi else None

    def contains(self, day: date) -> bool:
        return self.start <= day and (self.end is None or day <= self.end)


@dataclass(frozen=True, slots=True)
class Allocation:
    gpu_model: str
    count: int
    period: Period


@dataclass(frozen=True, slots=True)
class Party:
    """Who a statement names as supplier (공급자) or recipient (공급받는자); each field optional."""

    name: str | None = None
    business_number: str | None = None  # 사업자등록번호 XXX-XX-XXXXX (check digit verified)
    address: str | None = None
    representative: str | None = None  # 대표자


@dataclass(frozen=True, slots=True)
class Supplier:
    """``[supplier]``: the party that issues the statements, and how it is paid."""

    party: Party
    payment_account: str | None = None  # 입금 계좌: bank, account number, holder
    payment_due_days: int = 30  # due date = issue date (last KST day of the month) + these days


@dataclass(frozen=True, slots=True)
class Entity:
    name: str
    display_name: str
    state_pool: bool
    allocations: tuple[Allocation, ...]
    recipient: Party = Party()

    def allocated(self, gpu_model: str, day: date) -> int:
        return sum(a.count for a in self.allocations if a.gpu_model == gpu_model and a.period.contains(day))


@dataclass(frozen=True, slots=True)
class Project:
    name: str
    entity: str
    project_class: str
    recipient: Party = Party()  # a sub-account's own recipient details (name = display_name)


@dataclass(frozen=True, slots=True)
class RateCard:
    """KRW per GPU-hour for one entity pool × GPU model over a period, with class discounts."""

    entity: str
    gpu_model: str
    krw_per_gpu_hour: Decimal
    period: Period
    discounts: Mapping[str, Decimal] = field(default_factory=lambda: MappingProxyType({}))

    def discount_percent(self, project_class: str) -> Decimal:
        return self.discounts.get(project_class, Decimal(0))

    def applied_rate(self, project_class: str) -> Decimal:
        """The rate after the class discount (exact to 0.01 KRW, checked at load)."""
        pct = self.discount_percent(project_class)
        return (self.krw_per_gpu_hour * (_HUNDRED - pct) / _HUNDRED).quantize(_CENT)


@dataclass(frozen=True, slots=True)
class Thresholds:
    under_use_below: Decimal  # utilisation (busy / reported) below this is ``under_use``
    low_coverage_below: Decimal  # coverage (reported / capacity) below this is ``low_coverage``


@dataclass(frozen=True, slots=True)
class Registry:
    source: str
    entities: Mapping[str, Entity]
    projects: Mapping[str, Project]
    rates: tuple[RateCard, ...]
    rounding: RoundingRule
    thresholds: Thresholds
    vat_percent: Decimal = Decimal(10)  # [billing] vat_percent: VAT on statements (not in the ledger)
    supplier: Supplier | None = None  # [supplier]: optional; statements say when it is not set

    def gpu_models(self) -> tuple[str, ...]:
        models = {a.gpu_model for e in self.entities.values() for a in e.allocations}
        models |= {r.gpu_model for r in self.rates}
        return tuple(sorted(models))

    def rate_segments(self, entity: str, gpu_model: str, first: date, last: date) -> list[tuple[RateCard, date, date]]:
        """Rate cards of ``entity`` × ``gpu_model`` clipped to ``first`` … ``last``, in date order."""
        found = []
        for card in self.rates:
            if card.entity == entity and card.gpu_model == gpu_model:
                clipped = card.period.clip(first, last)
                if clipped:
                    found.append((card, *clipped))
        return sorted(found, key=lambda item: item[1])

    def rate_on(self, entity: str, gpu_model: str, day: date) -> RateCard | None:
        segments = self.rate_segments(entity, gpu_model, day, day)
        return segments[0][0] if segments else None

    def project_class(self, project: str) -> str:
        known = self.projects.get(project)
        return known.project_class if known else COMMERCIAL


# --------------------------------------------------------------------------------------------
# Loading and validation
# --------------------------------------------------------------------------------------------

_TOP_KEYS = {"billing", "compliance", "entities", "projects", "rates", "supplier"}
_PARTY_KEYS = {"business_number", "address", "representative"}


def load_registry(path: str | Path) -> Registry:
    """Read and validate ``path``; raises :class:`RegistryError` listing every problem."""
    source = str(path)
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle, parse_float=Decimal)
    except FileNotFoundError:
        raise RegistryError(source, ["file not found"]) from None
    except OSError as exc:
        raise RegistryError(source, [f"cannot read: {exc.strerror or exc}"]) from exc
    except tomllib.TOMLDecodeError as exc:
        raise RegistryError(source, [f"not valid TOML: {exc}"]) from exc
    return parse_registry(data, source=source)


def loads_registry(text: str, *, source: str = "<string>") -> Registry:
    """Parse registry TOML from a string (tests, ``registry check`` of piped input)."""
    try:
        data = tomllib.loads(text, parse_float=Decimal)
    except tomllib.TOMLDecodeError as exc:
        raise RegistryError(source, [f"not valid TOML: {exc}"]) from exc
    return parse_registry(data, source=source)


def parse_registry(data: Mapping[str, Any], *, source: str) -> Registry:
    """Validate an already-parsed TOML document (see :func:`load_registry`)."""
    v = _Validator()
    for key in sorted(set(data) - _TOP_KEYS):
        v.problem(f"unknown top-level key {key!r}")
    rounding, thresholds = _billing_and_thresholds(v, data)
    vat = _vat_percent(v, data)
    entities = _entities(v, data.get("entities"))
    projects = _projects(v, data.get("projects"), entities)
    rates = _rates(v, data.get("rates"), entities)
    _check_rate_coverage(v, entities, rates)
    supplier = _supplier(v, data.get("supplier"))
    if v.problems:
        raise RegistryError(source, v.problems)
    return Registry(
        source=source,
        entities=MappingProxyType(dict(sorted(entities.items()))),
        projects=MappingProxyType(dict(sorted(projects.items()))),
        rates=tuple(sorted(rates, key=lambda r: (r.entity, r.gpu_model, r.period.start))),
        rounding=rounding or RoundingRule.TRUNCATE,
        thresholds=thresholds,
        vat_percent=vat,
        supplier=supplier,
    )


class _Validator:
    def __init__(self) -> None:
        self.problems: list[str] = []

    def problem(self, text: str) -> None:
        self.problems.append(text)

    def table(self, value: Any, where: str) -> Mapping[str, Any] | None:
        if value is None:
            return None
        if not isinstance(value, Mapping):
            self.problem(f"{where}: must be a table")
            return None
        return value

    def text(self, value: Any, where: str, *, required: bool = True) -> str | None:
        if value is None:
            if required:
                self.problem(f"{where}: missing")
            return None
        if not isinstance(value, str) or not value.strip():
            self.problem(f"{where}: must be a non-empty string, got {value!r}")
            return None
        return value

    def day(self, value: Any, where: str, *, required: bool) -> date | None:
        if value is None:
            if required:
                self.problem(f"{where}: missing")
            return None
        if isinstance(value, date) and not isinstance(value, datetime):
            return value
        if isinstance(value, str):
            try:
                return date.fromisoformat(value)
            except ValueError:
                pass
        self.problem(f"{where}: bad date {value!r} (want a day such as 2026-11-01)")
        return None

    def decimal(self, value: Any, where: str, *, lo: Decimal, hi: Decimal | None = None) -> Decimal | None:
        if isinstance(value, bool) or value is None:
            self.problem(f"{where}: must be a number, got {value!r}")
            return None
        try:
            number = Decimal(str(value)) if not isinstance(value, Decimal) else value
        except InvalidOperation:
            self.problem(f"{where}: must be a number, got {value!r}")
            return None
        if not number.is_finite() or number < lo or (hi is not None and number > hi):
            bound = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
            self.problem(f"{where}: must be {bound}, got {value}")
            return None
        return number

    def period(self, raw: Mapping[str, Any], where: str) -> Period | None:
        start = self.day(raw.get("effective_from"), f"{where}.effective_from", required=True)
        end = self.day(raw.get("effective_to"), f"{where}.effective_to", required=False)
        if start is None:
            return None
        if end is not None and end < start:
            self.problem(f"{where}: effective_to {end} is before effective_from {start}")
            return None
        return Period(start, end)

    def unknown_keys(self, raw: Mapping[str, Any], allowed: set[str], where: str) -> None:
        for key in sorted(set(raw) - allowed):
            self.problem(f"{where}: unknown key {key!r}")


def _billing_and_thresholds(v: _Validator, data: Mapping[str, Any]) -> tuple[RoundingRule | None, Thresholds]:
    billing = v.table(data.get("billing"), "billing") or {}
    v.unknown_keys(billing, {"currency", "rounding", "vat_percent"}, "billing")
    currency = billing.get("currency", "KRW")
    if currency != "KRW":
        v.problem(f"billing.currency: only KRW is supported, got {currency!r}")
    rounding = None
    raw_rule = billing.get("rounding")
    if raw_rule is None:
        v.problem("billing.rounding: missing (one of truncate, half_up, half_even)")
    else:
        try:
            rounding = RoundingRule(raw_rule)
        except ValueError:
            choices = ", ".join(r.value for r in RoundingRule)
            v.problem(f"billing.rounding: unknown rounding rule {raw_rule!r} (one of {choices})")
    comp = v.table(data.get("compliance"), "compliance") or {}
    v.unknown_keys(comp, {"under_use_below", "low_coverage_below"}, "compliance")
    under = comp.get("under_use_below", Decimal("0.30"))
    cover = comp.get("low_coverage_below", Decimal("0.90"))
    under_d = v.decimal(under, "compliance.under_use_below", lo=Decimal(0), hi=Decimal(1))
    cover_d = v.decimal(cover, "compliance.low_coverage_below", lo=Decimal(0), hi=Decimal(1))
    return rounding, Thresholds(under_d or Decimal(0), cover_d or Decimal(0))


def _vat_percent(v: _Validator, data: Mapping[str, Any]) -> Decimal:
    """``[billing] vat_percent`` (default 10, Korea's VAT): added on statements, never in the ledger."""
    billing = data.get("billing")
    raw = billing.get("vat_percent", Decimal(10)) if isinstance(billing, Mapping) else Decimal(10)
    vat = v.decimal(raw, "billing.vat_percent", lo=Decimal(0), hi=_HUNDRED)
    if vat is not None and vat != vat.quantize(_CENT):
        v.problem(f"billing.vat_percent: at most 2 decimals, got {raw}")
    return vat if vat is not None else Decimal(10)


def _entities(v: _Validator, raw: Any) -> dict[str, Entity]:
    table = v.table(raw, "entities")
    if not table:
        v.problem("entities: no entity defined")
        return {}
    entities: dict[str, Entity] = {}
    for name, body in table.items():
        where = f"entities.{name}"
        if name == NATIONAL:
            v.problem(f"{where}: {NATIONAL!r} is reserved for the national roll-up")
            continue
        body = v.table(body, where)
        if body is None:
            continue
        v.unknown_keys(body, {"display_name", "state_pool", "allocations", *_PARTY_KEYS}, where)
        state_pool = body.get("state_pool", False)
        if not isinstance(state_pool, bool):
            v.problem(f"{where}.state_pool: must be true or false, got {state_pool!r}")
            state_pool = False
        display = body.get("display_name", name)
        if not isinstance(display, str):
            v.problem(f"{where}.display_name: must be a string")
            display = name
        allocations = _allocations(v, body.get("allocations", []), where)
        recipient = _party(v, body, where, name=display)
        entities[name] = Entity(name, display, state_pool, tuple(allocations), recipient)
    return entities


def _allocations(v: _Validator, raw: Any, where: str) -> list[Allocation]:
    if not isinstance(raw, list):
        v.problem(f"{where}.allocations: must be an array of tables")
        return []
    allocations: list[Allocation] = []
    for i, item in enumerate(raw):
        at = f"{where}.allocations[{i}]"
        item = v.table(item, at)
        if item is None:
            continue
        v.unknown_keys(item, {"gpu_model", "count", "effective_from", "effective_to"}, at)
        model = v.text(item.get("gpu_model"), f"{at}.gpu_model")
        count = item.get("count")
        if isinstance(count, bool) or not isinstance(count, int):
            v.problem(f"{at}.count: must be a whole number of GPUs, got {count!r}")
            count = None
        elif count < 0:
            v.problem(f"{at}.count: negative count {count}")
            count = None
        period = v.period(item, at)
        if model is None or count is None or period is None:
            continue
        for j, other in enumerate(allocations):
            if other.gpu_model == model and other.period.overlaps(period):
                v.problem(f"{at}: {model} allocation overlaps allocation [{j}] ({_show(other.period)})")
        allocations.append(Allocation(model, count, period))
    return allocations


def _projects(v: _Validator, raw: Any, entities: Mapping[str, Entity]) -> dict[str, Project]:
    table = v.table(raw, "projects") or {}
    projects: dict[str, Project] = {}
    for name, body in table.items():
        where = f"projects.{name}"
        if name == UNATTRIBUTED:
            v.problem(f"{where}: {UNATTRIBUTED!r} is reserved for usage without a job")
            continue
        body = v.table(body, where)
        if body is None:
            continue
        v.unknown_keys(body, {"entity", "class", "display_name", *_PARTY_KEYS}, where)
        entity = v.text(body.get("entity"), f"{where}.entity")
        if entity is not None and entity not in entities:
            v.problem(f"{where}.entity: unknown entity {entity!r}")
        klass = body.get("class", COMMERCIAL)
        if not isinstance(klass, str) or not klass:
            v.problem(f"{where}.class: must be a non-empty string, got {klass!r}")
            klass = COMMERCIAL
        shown = v.text(body.get("display_name"), f"{where}.display_name", required=False)
        recipient = _party(v, body, where, name=shown)
        if entity is not None:
            projects[name] = Project(name, entity, klass, recipient)
    return projects


def _rates(v: _Validator, raw: Any, entities: Mapping[str, Entity]) -> list[RateCard]:
    if raw is None:
        v.problem("rates: no rate card defined")
        return []
    if not isinstance(raw, list):
        v.problem("rates: must be an array of tables")
        return []
    cards: list[RateCard] = []
    for i, item in enumerate(raw):
        at = f"rates[{i}]"
        item = v.table(item, at)
        if item is None:
            continue
        allowed = {"entity", "gpu_model", "krw_per_gpu_hour", "effective_from", "effective_to", "discounts"}
        v.unknown_keys(item, allowed, at)
        entity = v.text(item.get("entity"), f"{at}.entity")
        if entity is not None and entity not in entities:
            v.problem(f"{at}.entity: unknown entity {entity!r}")
        model = v.text(item.get("gpu_model"), f"{at}.gpu_model")
        rate = v.decimal(item.get("krw_per_gpu_hour"), f"{at}.krw_per_gpu_hour", lo=Decimal(0))
        if rate is not None and rate != rate.quantize(_CENT):
            v.problem(f"{at}.krw_per_gpu_hour: at most 2 decimal places, got {rate}")
            rate = None
        period = v.period(item, at)
        discounts = _discounts(v, item.get("discounts", {}), at, rate)
        if None in (entity, model, rate, period) or discounts is None:
            continue
        assert entity is not None and model is not None and rate is not None and period is not None
        for j, other in enumerate(cards):
            if other.entity == entity and other.gpu_model == model and other.period.overlaps(period):
                v.problem(
                    f"{at}: rate period {_show(period)} for {entity} × {model} overlaps "
                    f"another rate card ({_show(other.period)})"
                )
                break
        cards.append(RateCard(entity, model, rate, period, MappingProxyType(discounts)))
    return cards


def _discounts(v: _Validator, raw: Any, at: str, rate: Decimal | None) -> dict[str, Decimal] | None:
    table = v.table(raw, f"{at}.discounts")
    if table is None:
        return None if raw is not None else {}
    discounts: dict[str, Decimal] = {}
    ok = True
    for klass, pct in table.items():
        where = f"{at}.discounts.{klass}"
        value = v.decimal(pct, where, lo=Decimal(0), hi=_HUNDRED)
        if value is None:
            ok = False
            continue
        if value != value.quantize(_CENT):
            v.problem(f"{where}: at most 2 decimal places, got {value}")
            ok = False
            continue
        if rate is not None:
            exact = rate * (_HUNDRED - value) / _HUNDRED
            if exact != exact.quantize(_CENT):
                v.problem(f"{where}: {value}% of {rate} KRW gives {exact}, not exact to 0.01 KRW")
                ok = False
                continue
        discounts[klass] = value
    return dict(sorted(discounts.items())) if ok else None


def _check_rate_coverage(v: _Validator, entities: Mapping[str, Entity], rates: list[RateCard]) -> None:
    """Every day of every allocation must have a rate for that entity × model."""
    for entity in entities.values():
        for alloc in entity.allocations:
            if alloc.count == 0:
                continue
            gap = _first_uncovered_day(alloc.period, [r.period for r in rates if r.entity == entity.name and r.gpu_model == alloc.gpu_model])
            if gap is not None:
                v.problem(
                    f"entities.{entity.name}: missing rate for allocated model {alloc.gpu_model!r} "
                    f"from {gap} (allocation {_show(alloc.period)})"
                )


def _first_uncovered_day(need: Period, have: list[Period]) -> date | None:
    day = need.start
    for period in sorted(have, key=lambda p: p.start):
        if period.start > day:
            break
        if period.end is None:
            return None
        if period.end >= day:
            day = period.end + timedelta(days=1)
        if need.end is not None and day > need.end:
            return None
    if need.end is not None and day > need.end:
        return None
    return day


def business_number_problem(value: str) -> str | None:
    """Why ``value`` is not a 사업자등록번호 (``XXX-XX-XXXXX``, National Tax Service check digit), or None."""
    digits = value.replace("-", "")
    if len(value) != 12 or value[3] != "-" or value[6] != "-" or len(digits) != 10 or not digits.isdigit():
        return f"must be a 사업자등록번호 written XXX-XX-XXXXX (10 digits), got {value!r}"
    d = [int(c) for c in digits]
    total = sum(x * w for x, w in zip(d[:9], (1, 3, 7, 1, 3, 7, 1, 3, 5), strict=True)) + d[8] * 5 // 10
    if (10 - total % 10) % 10 != d[9]:
        return f"{value!r} fails the 사업자등록번호 check digit (a typo?)"
    return None


def _party(v: _Validator, body: Mapping[str, Any], where: str, *, name: str | None) -> Party:
    number = v.text(body.get("business_number"), f"{where}.business_number", required=False)
    if number is not None and (problem := business_number_problem(number)) is not None:
        v.problem(f"{where}.business_number: {problem}")
        number = None
    address = v.text(body.get("address"), f"{where}.address", required=False)
    representative = v.text(body.get("representative"), f"{where}.representative", required=False)
    return Party(name, number, address, representative)


def _supplier(v: _Validator, raw: Any) -> Supplier | None:
    """``[supplier]`` (optional): name required when the table is there, the rest optional."""
    table = v.table(raw, "supplier")
    if table is None:
        return None
    v.unknown_keys(table, {"name", "payment_account", "payment_due_days", *_PARTY_KEYS}, "supplier")
    name = v.text(table.get("name"), "supplier.name")
    account = v.text(table.get("payment_account"), "supplier.payment_account", required=False)
    days = table.get("payment_due_days", 30)
    if isinstance(days, bool) or not isinstance(days, int) or not 0 <= days <= 365:
        v.problem(f"supplier.payment_due_days: must be a whole number of days from 0 to 365, got {days!r}")
        days = 30
    return Supplier(_party(v, table, "supplier", name=name), account, days)


def _show(period: Period) -> str:
    return f"{period.start} … {period.end if period.end else 'open'}"
