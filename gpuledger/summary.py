"""The per-entity summary printed after a close (demo and ``close``): read from the ledgers.

It reads the written Parquet ledgers back rather than trusting in-memory results, so what the
user sees is what an auditor will find in the files. It speaks the vocabulary of every other
output (:data:`accounting.figures.TERMS`): capacity; reported = busy + idle = attributed +
unattributed (never billed); unreported; billed GPU-hours (the exact usage rounded once, as
the manifest seals it) and the amount, side by side, so an amount is read against the hours
it bills; breaches as sentences.
"""

from __future__ import annotations

import io

from decimal import Decimal
from typing import Any

from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from accounting.export import BILLING_DIR, COMPLIANCE_DIR, read_ledger
from accounting.figures import EntityFigures, entity_figures, hours_text, is_simulated, pct, shown_billed_hours, won_text
from accounting.registry import NATIONAL, Registry
from accounting.breaches import breaches
from accounting.schemas import BILLING, COMPLIANCE
from gpuledger.cli_common import out
from storage.dataset import Store

USAGE_COLUMNS = ("entity", "capacity", "reported", "coverage", "busy", "idle", "util.", "unreported")
BILLING_COLUMNS = ("entity", "reported", "attributed", "unattributed¹", "billed h", "amount ₩")


def entity_summary(store: Store, period: str, registry: Registry | None = None) -> list[EntityFigures]:
    """Per entity (national total last): the one vocabulary's GPU-hours, billed hours and KRW."""
    compliance = read_ledger(store, COMPLIANCE_DIR, period, COMPLIANCE)
    billing = read_ledger(store, BILLING_DIR, period, BILLING)
    return entity_figures(compliance, billing, registry)


def print_close_summary(store: Store, period: str, result: Any = None, *, registry: Registry | None = None) -> None:
    figures = entity_summary(store, period, registry)
    simulated = " — SIMULATED DATA" if is_simulated(store) else ""
    usage = _table(f"{period} (KST month): GPU-hours{simulated}", USAGE_COLUMNS)
    billing = _table(f"{period}: billed GPU-hours and KRW{simulated}", BILLING_COLUMNS)
    for f in figures:
        name = "total" if f.entity == NATIONAL else f.entity
        if f.entity == NATIONAL:
            usage.add_section()
            billing.add_section()
        usage.add_row(
            name,
            _h(f.capacity_gpu_hours),
            _h(f.reported_gpu_hours),
            pct(f.coverage),
            _h(f.busy_gpu_hours),
            _h(f.idle_gpu_hours),
            pct(f.utilisation),
            _h(f.unreported_gpu_hours),
        )
        billing.add_row(
            name,
            _h(f.reported_gpu_hours),
            _h(f.attributed_gpu_hours),
            _h(f.unattributed_gpu_hours),
            _h(f.billed_hours_shown),
            won_text(f.amount_krw),
        )
    _print_whole(usage)
    out.print(
        "reported = busy + idle; unreported = capacity − reported (down or silent);\n"
        "coverage = reported ÷ capacity; util. = busy ÷ reported.",
        soft_wrap=True,
        highlight=False,
    )
    out.print()
    _print_whole(billing)
    out.print(
        "reported = attributed + unattributed. ¹unattributed: no job found, counted but never billed.\n"
        "billed h = attributed usage + corrections; amount = Σ of the billing ledger's lines (whole won).\n"
        "GPU-hours to 2 places, amounts in whole won: the same figures as the report and the statements.",
        soft_wrap=True,
        highlight=False,
    )
    _print_corrections(read_ledger(store, BILLING_DIR, period, BILLING))
    said = breaches(read_ledger(store, COMPLIANCE_DIR, period, COMPLIANCE), registry)
    if said:
        out.print(f"breaches ({len(said)}):", highlight=False)
        for breach in said:
            out.print(f"  - {breach.english}", soft_wrap=True, highlight=False)
    else:
        out.print("breaches: none", highlight=False)
    from accounting.losses import loss_sentences, month_losses

    for _, english in loss_sentences(month_losses(store, period)):  # never a silent zero
        out.print(f"  - {english}", soft_wrap=True, highlight=False)
    where = [
        ("billing ledger:   ", store.path("ledgers", "billing", f"period={period}")),
        ("compliance ledger:", store.path("ledgers", "compliance", f"period={period}")),
        ("hourly usage:     ", store.path("usage_hourly", f"period={period}")),
    ]
    if store.exists(store.path("manifests", f"{period}.json")):
        where.append(("manifest:         ", store.path("manifests", f"{period}.json")))
    for label, path in where:  # paths stay on one line, so they can be copied
        out.print(f"{label} {path}", soft_wrap=True, highlight=False)


def _print_corrections(billing: Any) -> None:  # noqa: ANN401 - a polars frame, imported on use
    """One line per entity × corrected month: usage of a closed month that arrived after its
    close, billed by this close (why an entity's billed hours exceed its attributed ones)."""
    import polars as pl

    rows = (
        billing.filter(pl.col("charge_class") == "correction")
        .group_by("entity", "corrects_period")
        .agg(pl.col("gpu_microseconds").sum(), pl.col("amount_krw").sum(), pl.len().alias("lines"))
        .sort("entity", "corrects_period")
    )
    if rows.height == 0:
        return
    out.print("corrections of closed months (late usage, at their months' rates):", highlight=False)
    for r in rows.iter_rows(named=True):
        out.print(
            f"  {r['entity']}: {r['corrects_period']}, {_h(shown_billed_hours(r['gpu_microseconds']))} GPU-hours, "
            f"{won_text(r['amount_krw'])} won ({r['lines']} lines)",
            soft_wrap=True,
            highlight=False,
        )


def _print_whole(table: Table) -> None:
    """Print a table at its full width: a figure is never cut to "16,252.…" to fit a narrow
    terminal or a log (80 columns when not a tty); a wide table wraps in the viewer instead."""
    width = Measurement.get(out, out.options.update_width(10_000), table).maximum
    if width <= out.width:
        out.print(table)
        return
    # rich clamps a print's width to its console's: render on a console as wide as the table,
    # then print the lines unwrapped and uncropped through ``out`` (so its capture still sees them)
    wide = Console(file=io.StringIO(), width=width, color_system=out.color_system, force_terminal=out.is_terminal)
    with wide.capture() as captured:
        wide.print(table)
    out.print(Text.from_ansi(captured.get().rstrip("\n")), soft_wrap=True, highlight=False)


def _table(title: str, columns: tuple[str, ...]) -> Table:
    table = Table(title=title, box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0), title_justify="left", show_edge=False, pad_edge=False)
    for name in columns:
        table.add_column(name, justify="left" if name == "entity" else "right", no_wrap=True)
    return table


def _h(value: Decimal | None) -> str:
    """GPU-hours at the one precision of every output (accounting.figures: 2 places)."""
    return hours_text(value)
