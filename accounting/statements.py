"""A monthly statement (거래명세서 / 청구서): what it says, whatever the format it is written in.

:func:`build_statement` turns an entity's billing-ledger lines and the registry into a
:class:`Statement`: the supplier (공급자) and recipient (공급받는자) from the registry, the
statement number from the seal, the issue date (the last KST day of the month) and due date, the
lines, 공급가액 (the sum of the lines' whole-won amounts), 부가세 (the registry's VAT rule over
the subtotal) and 합계. The XLSX (:mod:`accounting.workbooks`) and the PDF
(:mod:`accounting.statement_pdf`) are drawn from it, so the two cannot disagree.

Sub-accounts (the state pool lends its GPUs on to institutes): a state-pool entity's
statement lists each project as a :class:`SubAccount` with its own statement under the entity's
number. Where rounding happens, so the sub-accounts sum to the entity to the won:

* money is rounded once per billing line (the ledger's ``amount_krw``); a line belongs to one
  project, so a sub-account's 공급가액 is the sum of its lines and the sub-accounts' 공급가액
  sum exactly to the entity's (never a project's exact usage × rate rounded again);
* VAT is computed once, on the entity's 공급가액 (the tax invoice is the entity's), and split
  over the sub-accounts by :func:`accounting.figures.apportion` (largest remainder), so the
  shares sum exactly to the entity's VAT; rounding each project's VAT by itself would not.
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import replace
from datetime import date, timedelta
from decimal import Decimal

import polars as pl

from accounting.figures import (
    apportion,
    display_name,
    kst_span,
    shown_billed_hours,
    statement_number,
)
from accounting.registry import Party, Registry, RoundingRule, Supplier
from accounting.usage import parse_month

_HUNDRED = Decimal(100)
CHARGE_LABELS = {"usage": "사용 usage", "correction": "정정 correction"}
_CHARGE = CHARGE_LABELS


@dataclass(frozen=True, slots=True)
class Line:
    """One billing-ledger line as a statement shows it."""

    charge_class: str
    corrects_period: str | None
    project: str
    project_class: str | None
    gpu_model: str
    rate_from: date
    rate_to: date
    gpu_microseconds: int
    list_rate: Decimal
    discount_percent: Decimal
    rate: Decimal
    amount_krw: Decimal

    @property
    def hours_shown(self) -> Decimal:
        return shown_billed_hours(self.gpu_microseconds)

    @classmethod
    def from_ledger(cls, row: dict) -> Line:
        return cls(row["charge_class"], row["corrects_period"], row["project"], row["project_class"], row["gpu_model"],
                   row["rate_from"], row["rate_to"], int(row["gpu_microseconds"]), row["list_rate_krw_per_gpu_hour"],
                   row["discount_percent"], row["rate_krw_per_gpu_hour"], row["amount_krw"])


@dataclass(frozen=True, slots=True)
class SubAccount:
    """A project of an entity's statement with its own statement (the state pool's institutes)."""

    project: str
    recipient: Party
    number: str
    billed_gpu_microseconds: int
    subtotal_krw: Decimal  # Σ of its lines' whole-won amounts: the sub-accounts sum to the entity's
    vat_krw: Decimal  # its share of the entity's VAT (largest remainder): the shares sum to it

    @property
    def total_krw(self) -> Decimal:
        return self.subtotal_krw + self.vat_krw

    @property
    def billed_hours_shown(self) -> Decimal:
        return shown_billed_hours(self.billed_gpu_microseconds)

    @property
    def recipient_name(self) -> str:
        return self.recipient.name or self.project


@dataclass(frozen=True, slots=True)
class Statement:
    """Everything a statement says, in any format (XLSX here, PDF in :mod:`accounting.statement_pdf`).

    Invariants: ``lines`` are ledger lines of one entity (and one project for a sub-account);
    the subtotal is the sum of their whole-won amounts; ``vat_krw`` is the registry's rule over
    the subtotal (entity) or the apportioned share (sub-account); the sub-accounts' subtotals and
    VAT shares sum exactly to the entity's.
    """

    period: str
    entity: str
    display_name: str
    number: str
    manifest_sha256: str
    rounding: RoundingRule
    vat_percent: Decimal
    simulated: bool
    issue_date: date
    due_date: date
    supplier: Supplier | None
    recipient: Party
    lines: tuple[Line, ...]
    vat_krw: Decimal
    sub_accounts: tuple[SubAccount, ...] = ()
    project: str | None = None  # set on a sub-account's own statement
    parent_number: str | None = None

    @property
    def usage_krw(self) -> Decimal:
        return sum((ln.amount_krw for ln in self.lines if ln.charge_class == "usage"), Decimal(0))

    @property
    def subtotal_krw(self) -> Decimal:
        return sum((ln.amount_krw for ln in self.lines), Decimal(0))

    @property
    def correction_krw(self) -> Decimal:
        return self.subtotal_krw - self.usage_krw

    @property
    def total_krw(self) -> Decimal:
        return self.subtotal_krw + self.vat_krw

    @property
    def billed_gpu_microseconds(self) -> int:
        return sum(ln.gpu_microseconds for ln in self.lines)

    @property
    def billed_hours_shown(self) -> Decimal:
        return shown_billed_hours(self.billed_gpu_microseconds)

    @property
    def recipient_name(self) -> str:
        return self.recipient.name or self.display_name

    @property
    def period_text(self) -> str:
        return _period_text(self.period)

    @property
    def rounding_note(self) -> str:
        return (f"금액은 각 줄의 정확한 사용량 × 단가를 한 번 원 단위로 처리({ROUNDING_WORDS[self.rounding.value]})한 값이며 "
                "합계는 줄의 합입니다. GPU·시간은 소수 둘째 자리. 부가세는 명세서에서만 더합니다. / Each amount is the line's "
                "exact usage × rate rounded once to whole won; totals are sums of lines; GPU-hours to 2 places; VAT is "
                "added on the statement only.")


ROUNDING_WORDS = {"truncate": "원 미만 절사 truncate", "half_up": "반올림 half up", "half_even": "오사오입 half even"}


def issue_and_due(period: str, supplier: Supplier | None) -> tuple[date, date]:
    """Issue date: the last KST day of the month (monthly billing); due: that + the supplier's days."""
    issue = parse_month(period).last_day
    return issue, issue + timedelta(days=supplier.payment_due_days if supplier is not None else 30)


def build_statement(
    period: str,
    entity: str,
    rows: pl.DataFrame,
    *,
    registry: Registry | None,
    manifest_sha256: str,
    simulated: bool,
    content_sha256: str | None = None,
) -> Statement:
    """The entity's statement from its ledger lines; a state pool's projects become sub-accounts.

    The number derives from the sealed content's hash (``content_sha256``, the manifest's own
    hash for months sealed before it existed); the statement shows the manifest's SHA-256.
    """
    rounding = registry.rounding if registry else RoundingRule.TRUNCATE
    vat_percent = registry.vat_percent if registry else Decimal(10)
    supplier = registry.supplier if registry else None
    known = registry.entities.get(entity) if registry else None
    lines = tuple(Line.from_ledger(r) for r in rows.iter_rows(named=True))
    subtotal = sum((ln.amount_krw for ln in lines), Decimal(0))
    number = statement_number(period, entity, content_sha256 or manifest_sha256)
    issue, due = issue_and_due(period, supplier)
    statement = Statement(
        period, entity, display_name(registry, entity), number, manifest_sha256, rounding, vat_percent, simulated,
        issue, due, supplier, replace(known.recipient, name=known.display_name) if known else Party(), lines,
        vat(subtotal, vat_percent, rounding),
    )
    if known is None or not known.state_pool:
        return statement
    return replace(statement, sub_accounts=tuple(_sub_accounts(statement, registry)))


def _sub_accounts(statement: Statement, registry: Registry) -> list[SubAccount]:
    projects = sorted({ln.project for ln in statement.lines})
    subtotals = [sum((ln.amount_krw for ln in statement.lines if ln.project == p), Decimal(0)) for p in projects]
    shares = apportion(statement.vat_krw, subtotals)
    out = []
    for project, subtotal, share in zip(projects, subtotals, shares, strict=True):
        known = registry.projects.get(project)
        out.append(SubAccount(
            project, known.recipient if known else Party(), sub_account_number(statement.number, project),
            sum(ln.gpu_microseconds for ln in statement.lines if ln.project == project), subtotal, share,
        ))
    return out


def sub_statement(parent: Statement, sub: SubAccount) -> Statement:
    """A sub-account's own statement: its lines, its VAT share, its recipient, under the parent's number."""
    recipient = sub.recipient if sub.recipient.name else replace(sub.recipient, name=sub.project)
    return replace(
        parent, number=sub.number, recipient=recipient, project=sub.project, parent_number=parent.number,
        lines=tuple(ln for ln in parent.lines if ln.project == sub.project), vat_krw=sub.vat_krw, sub_accounts=(),
    )


def sub_account_number(parent_number: str, project: str) -> str:
    """``<entity statement no.>-<PROJECT>``: a sub-account's statement names its parent's."""
    return f"{parent_number}-{''.join(c if c.isalnum() else '-' for c in project).upper()}"


def vat(subtotal: Decimal, vat_percent: Decimal, rounding: RoundingRule) -> Decimal:
    """VAT on a statement's subtotal, whole won by the registry's rule (never in the ledger)."""
    return rounding.apply(subtotal * vat_percent / _HUNDRED)


def _period_text(period: str) -> str:
    start, end = kst_span(period)
    return f"{start:%Y-%m-%d %H:%M} – {end:%Y-%m-%d %H:%M} KST ({start.year}년 {start.month}월)"


