"""The report's tables of corrections and of mid-month rate changes, from billing-ledger rows."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import polars as pl
import pyarrow as pa
import pytest

from accounting.report import correction_rows, rate_change_rows
from accounting.schemas import BILLING

pytestmark = pytest.mark.unit

HOUR_US = 3_600_000_000


def _line(project: str, klass: str, charge: str, frm: date, to: date, hours: int, rate: str, discount: str, amount: int,
          *, entity: str = "gov", model: str = "NVIDIA GB200", corrects: str | None = None) -> dict:
    return {
        "period": "2026-10", "entity": entity, "project": project, "project_class": klass, "gpu_model": model,
        "charge_class": charge, "corrects_period": corrects, "rate_from": frm, "rate_to": to,
        "gpu_microseconds": hours * HOUR_US, "gpu_hours": Decimal(hours), "list_rate_krw_per_gpu_hour": Decimal("5200"),
        "discount_percent": Decimal(discount), "rate_krw_per_gpu_hour": Decimal(rate), "amount_krw": Decimal(amount),
    }


def _billing(*lines: dict) -> pl.DataFrame:
    return pl.from_arrow(pa.Table.from_pylist(list(lines), schema=BILLING))


OCT1, OCT15, OCT16, OCT31 = date(2026, 10, 1), date(2026, 10, 15), date(2026, 10, 16), date(2026, 10, 31)


def test_a_rate_change_is_one_row_per_card_summed_over_projects() -> None:
    billing = _billing(
        _line("snu-llm", "university", "usage", OCT1, OCT15, 10, "2600", "50", 26000),
        _line("snu-llm", "university", "usage", OCT16, OCT31, 20, "2600", "50", 52000),
        _line("upstage", "startup", "usage", OCT1, OCT15, 1, "3640", "30", 3640),
        # a model priced at one card all month is not a rate change
        _line("snu-llm", "university", "usage", OCT1, OCT31, 5, "1950", "50", 9750, model="NVIDIA B200"),
    )
    rows = rate_change_rows(billing)
    assert [(r.gpu_model, r.rate_days, r.billed_gpu_hours, r.amount_krw) for r in rows] == [
        ("NVIDIA GB200", "2026-10-01 – 10-15", Decimal("11.00"), Decimal(29640)),
        ("NVIDIA GB200", "2026-10-16 – 10-31", Decimal("20.00"), Decimal(52000)),
    ]
    # two classes' discounts in one segment: no single applied rate to show; one class: its rate
    assert [r.rate_krw_per_gpu_hour for r in rows] == [None, Decimal("2600")]


def test_corrections_are_listed_with_the_month_they_correct() -> None:
    billing = _billing(
        _line("snu-llm", "university", "usage", OCT1, OCT31, 10, "2600", "50", 26000),
        _line("snu-llm", "university", "correction", date(2026, 9, 1), date(2026, 9, 30), 3, "2600", "50", 7800,
              corrects="2026-09"),
    )
    (row,) = correction_rows(billing)
    assert (row.corrects_period, row.project, row.rate_days, row.billed_gpu_hours, row.amount_krw) == (
        "2026-09", "snu-llm", "2026-09-01 – 09-30", Decimal("3.00"), Decimal(7800)
    )
    assert correction_rows(billing.filter(pl.col("charge_class") == "usage")) == []
