"""A small closed month, worked out by hand, for the export and report tests.

Given (KST month 2026-11, sample rounding rule: truncate):

| entity  | project            | model                 | hourly usage µs                 | rate KRW/h | amount |
|---------|--------------------|-----------------------|---------------------------------|-----------:|-------:|
| gov     | snu-llm            | NVIDIA B200           | 3 × 3,600,000,000 + 1,800,000,000 = 12,600,000,000 (3.5 h) | 2,000.50 | 7,001 (7,001.75 truncated) |
| gov     | unattributed       | NVIDIA B200           | 360,000,000 (0.1 h, never billed) | – | – |
| samsung | samsung-foundry-ai | NVIDIA H100 80GB HBM3 | 1,000,000,000 (0.277778 h)      | 3,333.33 | 925 (925.925 truncated) |
| gov     | snu-llm (correction of 2026-10) | NVIDIA B200 | 3,600,000,000 (1 h)        | 2,000.50 | 2,000 |

Then the statements: gov 7,001 usage + 2,000 correction = 9,001 KRW; samsung 925 KRW.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import polars as pl

from accounting.schemas import BILLING, COMPLIANCE
from storage.dataset import Store, to_table
from storage.manifest import seal_period
from storage.schemas import USAGE_HOURLY

PERIOD = "2026-11"
HOUR_US = 3_600_000_000


def _usage_row(entity: str, project: str, model: str, device: str, hour: int, us: int, busy_us: int) -> dict:
    start = datetime(2026, 10, 31, 15, tzinfo=UTC) + timedelta(hours=hour)  # 2026-11-01 00:00 KST + hour
    return {
        "period": PERIOD,
        "date": "2026-11-01",
        "hour_start": start,
        "site": "dc1",
        "node": "node-1",
        "entity": entity,
        "project": project,
        "job_id": None,
        "gpu_uuid": device,
        "device_uuid": device,
        "gpu_model": model,
        "mig_profile": None,
        "gpu_fraction": 1.0,
        "gpu_microseconds": us,
        "busy_gpu_microseconds": busy_us,
        "energy_joules": None,
        "events": 60,
        "partial_events": 0,
        "samples": 360,
        "expected_samples": 360,
    }


def usage_frame() -> pl.DataFrame:
    rows = [
        _usage_row("gov", "snu-llm", "NVIDIA B200", "GPU-a", 0, HOUR_US, HOUR_US // 2),
        _usage_row("gov", "snu-llm", "NVIDIA B200", "GPU-a", 1, HOUR_US, HOUR_US // 2),
        _usage_row("gov", "snu-llm", "NVIDIA B200", "GPU-b", 0, HOUR_US, HOUR_US),
        _usage_row("gov", "snu-llm", "NVIDIA B200", "GPU-b", 1, HOUR_US // 2, 0),
        _usage_row("gov", "unattributed", "NVIDIA B200", "GPU-c", 0, 360_000_000, 0),
        _usage_row("samsung", "samsung-foundry-ai", "NVIDIA H100 80GB HBM3", "GPU-d", 0, 1_000_000_000, 100_000_000),
    ]
    return pl.DataFrame(rows, schema=pl.from_arrow(USAGE_HOURLY.empty_table()).schema)


def _line(entity, project, cls, model, charge, corrects, us, hours, rate, amount) -> dict:
    return {
        "period": PERIOD,
        "entity": entity,
        "project": project,
        "project_class": cls,
        "gpu_model": model,
        "charge_class": charge,
        "corrects_period": corrects,
        "rate_from": date(2026, 11, 1) if charge == "usage" else date(2026, 10, 1),
        "rate_to": date(2026, 11, 30) if charge == "usage" else date(2026, 10, 31),
        "gpu_microseconds": us,
        "gpu_hours": Decimal(hours),
        "list_rate_krw_per_gpu_hour": Decimal(rate),
        "discount_percent": Decimal("0.00"),
        "rate_krw_per_gpu_hour": Decimal(rate),
        "amount_krw": Decimal(amount),
    }


def billing_frame() -> pl.DataFrame:
    rows = [
        _line("gov", "snu-llm", "university", "NVIDIA B200", "usage", None, 12_600_000_000, "3.500000", "2000.50", 7001),
        _line("gov", "snu-llm", "university", "NVIDIA B200", "correction", "2026-10", HOUR_US, "1.000000", "2000.50", 2000),
        _line("samsung", "samsung-foundry-ai", "commercial", "NVIDIA H100 80GB HBM3", "usage", None,
              1_000_000_000, "0.277778", "3333.33", 925),
    ]
    return pl.DataFrame(rows, schema=pl.from_arrow(BILLING.empty_table()).schema)


def compliance_frame() -> pl.DataFrame:
    def row(entity, model, gpus, reported, busy, attributed, unattributed, breaches):
        capacity = Decimal(gpus * 720)
        return {
            "period": PERIOD,
            "entity": entity,
            "gpu_model": model,
            "allocated_gpus": gpus,
            "capacity_gpu_hours": capacity,
            "reported_gpu_hours": Decimal(reported),
            "attributed_gpu_hours": Decimal(attributed),
            "unattributed_gpu_hours": Decimal(unattributed),
            "busy_gpu_hours": Decimal(busy),
            "idle_gpu_hours": Decimal(reported) - Decimal(busy),
            "unreported_gpu_hours": capacity - Decimal(reported),
            "quarantined_gpu_hours": Decimal("0"),
            "utilisation": (Decimal(busy) / Decimal(reported)).quantize(Decimal("0.000001")),
            "coverage": (Decimal(reported) / capacity).quantize(Decimal("0.000001")),
            "breaches": breaches,
        }

    rows = [
        row("gov", "NVIDIA B200", 3, "3.600000", "2.000000", "3.500000", "0.100000", ["under_use", "low_coverage"]),
        row("samsung", "NVIDIA H100 80GB HBM3", 1, "0.277778", "0.027778", "0.277778", "0.000000", ["low_coverage"]),
    ]
    return pl.DataFrame(rows, schema=pl.from_arrow(COMPLIANCE.empty_table()).schema)


def build_month(root: Path, *, signing_key: Path | None = None) -> Store:
    """Write the month's hourly usage and ledgers under ``root`` and seal it."""
    store = Store(root)
    added = store.write_files("usage_hourly", usage_frame(), "b1")
    store.commit_files("usage_hourly", added)
    usage = store.path("usage_hourly", added[0].path)
    billing = store.path("ledgers/billing", f"period={PERIOD}", "billing.parquet")
    store.write_parquet_atomic(billing, to_table(billing_frame(), BILLING))
    compliance = store.path("ledgers/compliance", f"period={PERIOD}", "compliance.parquet")
    store.write_parquet_atomic(compliance, to_table(compliance_frame(), COMPLIANCE))
    totals = {"amount_krw.gov": "9001", "amount_krw.samsung": "925", "amount_krw": "9926"}
    seal_period(store, PERIOD, [usage, billing, compliance], totals, signing_key=signing_key)
    return store
