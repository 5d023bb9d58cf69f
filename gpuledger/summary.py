"""The per-entity summary printed after a close (demo and ``close``): read from the ledgers.

It reads the written Parquet ledgers back rather than trusting in-memory results, so what the
user sees is what an auditor will find in the files.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import polars as pl
from rich.table import Table

from accounting.schemas import BILLING, COMPLIANCE
from gpuledger.cli_common import out
from storage.dataset import Store


def entity_summary(store: Store, period: str) -> pl.DataFrame:
    """Per entity: capacity (allocated), reported, busy, idle, unreported GPU-hours and KRW billed."""
    compliance = (
        store.scan("ledgers/compliance", COMPLIANCE)
        .filter(pl.col("period") == period, pl.col("entity") != "ALL")
        .group_by("entity")
        .agg(
            pl.col("capacity_gpu_hours").sum(),
            pl.col("reported_gpu_hours").sum(),
            pl.col("busy_gpu_hours").sum(),
            pl.col("idle_gpu_hours").sum(),
            pl.col("unreported_gpu_hours").sum(),
        )
    )
    billing = (
        store.scan("ledgers/billing", BILLING)
        .filter(pl.col("period") == period)
        .group_by("entity")
        .agg(pl.col("amount_krw").sum())
    )
    return compliance.join(billing, on="entity", how="full", coalesce=True).sort("entity").collect()


def print_close_summary(store: Store, period: str, result: Any = None) -> None:
    summary = entity_summary(store, period)
    table = Table(title=f"gpuledger close {period} (KST month), GPU-hours and KRW", padding=(0, 1))
    for name in ("entity", "allocated", "used", "busy", "idle", "unreported", "amount ₩"):
        table.add_column(name, justify="left" if name == "entity" else "right", no_wrap=True)
    total = Decimal(0)
    for row in summary.iter_rows(named=True):
        amount = row["amount_krw"] or Decimal(0)
        total += amount
        table.add_row(
            row["entity"],
            _h(row["capacity_gpu_hours"]),
            _h(row["reported_gpu_hours"]),
            _h(row["busy_gpu_hours"]),
            _h(row["idle_gpu_hours"]),
            _h(row["unreported_gpu_hours"]),
            f"{amount:,.0f}",
        )
    table.add_section()
    table.add_row("total", "", "", "", "", "", f"{total:,.0f}")
    out.print(table)
    where = [
        ("billing ledger:   ", store.path("ledgers", "billing", f"period={period}")),
        ("compliance ledger:", store.path("ledgers", "compliance", f"period={period}")),
        ("hourly usage:     ", store.path("usage_hourly", f"period={period}")),
    ]
    if store.exists(store.path("manifests", f"{period}.json")):
        where.append(("manifest:         ", store.path("manifests", f"{period}.json")))
    for label, path in where:  # paths stay on one line, so they can be copied
        out.print(f"{label} {path}", soft_wrap=True, highlight=False)


def _h(value: Decimal | None) -> str:
    return "-" if value is None else f"{value:,.0f}"
