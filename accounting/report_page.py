"""The HTML page of the monthly report (see :mod:`accounting.report`): one self-contained file.

No network: charts are embedded PNGs, the Korean font an embedded subset (added by the
caller), styles inline (``templates/report.css``), the layout in ``templates/report.html.j2``.
Headers and cells never break inside a Korean word (``word-break: keep-all``: 미보고, never
미보/고). Printable on A4 landscape: the print styles keep tables and figures whole, start the charts on a new page, and repeat a "simulated data" mark on every page when
the data is simulated. Every figure comes from :mod:`accounting.figures` in its one vocabulary.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal

from accounting.breaches import Breach
from accounting.figures import TERMS, EntityFigures, kst_span
from accounting.registry import NATIONAL, Thresholds
from accounting.templating import render

TITLE = "GPU 사용 보고서"


@dataclass(frozen=True, slots=True)
class NodeGap:
    """A node that reported in the month but not in every hour of it (KST instants)."""

    node: str
    entity: str
    gpu_model: str
    missing_hours: int
    longest_from: datetime  # first silent hour (KST, naive)
    longest_to: datetime  # end of the longest silent stretch (exclusive)

    @property
    def longest_hours(self) -> int:
        return int((self.longest_to - self.longest_from).total_seconds() // 3600)


@dataclass(frozen=True, slots=True)
class SealStatus:
    manifest_sha256: str | None  # SHA-256 of the manifest file (what sha256sum prints)
    verified: bool
    detail: str  # one sentence, Korean and English




@dataclass(frozen=True, slots=True)
class ChargeRow:
    """Billing-ledger lines as the report lists them: a correction of an earlier month, or the
    usage of one rate segment of an entity × model whose rate card changed within the month."""

    name: str  # the entity's display name
    project: str  # "" where the row sums every project of the segment
    gpu_model: str
    corrects_period: str | None
    rate_from: date
    rate_to: date
    list_rate_krw_per_gpu_hour: Decimal
    rate_krw_per_gpu_hour: Decimal | None  # after the class discount; None where projects' classes differ
    billed_gpu_hours: Decimal  # exact microseconds rounded once to 2 places
    amount_krw: Decimal

    @property
    def rate_days(self) -> str:
        return f"{self.rate_from:%Y-%m-%d} – {self.rate_to:%m-%d}"


@dataclass(frozen=True, slots=True)
class Page:
    period: str
    figures: Sequence[EntityFigures]
    projects: Sequence[tuple[str, str, Decimal, Decimal]]
    charts: dict[str, bytes]
    breaches: Sequence[Breach]
    gaps: Sequence[NodeGap]
    seal: SealStatus
    simulated: bool
    thresholds: Thresholds | None
    names: dict[str, str]
    models: Sequence[ModelRow] = ()
    corrections: Sequence[ChargeRow] = ()
    rate_changes: Sequence[ChargeRow] = ()


@dataclass(frozen=True, slots=True)
class ModelRow:
    """One entity × GPU model of the compliance ledger, as the per-model table shows it."""

    name: str
    gpu_model: str
    allocated_gpus: int
    coverage: Decimal | None
    utilisation: Decimal | None
    breaches: tuple[str, ...]


def render_html(page: Page) -> str:
    """The page (``templates/report.html.j2``); every value is escaped by the template."""
    start, end = kst_span(page.period)
    return render(
        "report.html.j2",
        title=TITLE,
        period=page.period,
        start=f"{start:%Y-%m-%d %H:%M}",
        end=f"{end:%Y-%m-%d %H:%M}",
        simulated=page.simulated,
        seal=page.seal,
        national=next((f for f in page.figures if f.entity == NATIONAL), None),
        national_code=NATIONAL,
        breaches=page.breaches,
        figures=page.figures,
        models=page.models,
        gaps=page.gaps,
        names=page.names,
        terms=TERMS,
        thresholds=page.thresholds,
        projects=page.projects,
        corrections=page.corrections,
        corrections_krw=sum((row.amount_krw for row in page.corrections), Decimal(0)),
        rate_changes=page.rate_changes,
        charts=[(name, base64.b64encode(data).decode()) for name, data in page.charts.items()],
    )
