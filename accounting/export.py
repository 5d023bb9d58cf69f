"""Finance and auditor packs of a closed month (``gpuledger export --month YYYY-MM``).

Layout under ``<out>/<YYYY-MM>/`` (default ``<out>`` = ``<data-dir>/exports``)::

    finance/summary.csv                    one line per entity: the usage vocabulary (capacity, reported,
                                           attributed, unattributed, busy, idle, unreported GPU-hours),
                                           billed GPU-hours, usage / corrections / total KRW, VAT, statement no.
    finance/statement-<entity>.csv         the entity's billing lines (the ledger's columns)
    finance/statement-<entity>.xlsx        the entity's monthly statement (see accounting/statements.py)
    finance/programme-<YYYY-MM>.xlsx       one consolidated workbook: billing, usage, every line, terms
    auditor/README.md                      how to check the hashes and re-derive every total
    auditor/SHA256SUMS                     ``sha256sum -c`` input for every copied sealed file
    auditor/manifests/YYYY-MM.json(.sig)   the period's manifest (and signature)
    auditor/ledgers/…, auditor/usage_hourly/…   copies, at the same relative paths as the manifest
    auditor/registry.toml                  the registry the close priced with (when given)

Invariants: only a sealed month is exported; every copied file is hashed while copied and
must match its manifest entry (else :class:`IntegrityError`); money is exact — CSV carries the
ledger's decimal strings, XLSX carries whole won as integers — and each entity's total equals
the sum of its ledger lines. The billing truth is the ledger: amounts are its lines' whole-won
``amount_krw`` summed; billed GPU-hours are its lines' exact ``gpu_microseconds`` summed and
rounded once (half-even, 6 places) — the figure the manifest seals — so summary.csv, the
statements, the programme workbook, the pack README and the manifest agree to the last digit.
Every byte goes through :class:`Store`, never a bare ``open``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import polars as pl

from accounting.billing import gpu_hours
from accounting.errors import AccountingError
from accounting.figures import EntityFigures, display_name, entity_figures, is_simulated, statement_number
from accounting.registry import NATIONAL, Registry, RoundingRule
from accounting.templating import render
from accounting.statements import ProgrammeLine, StatementHeader, programme_xlsx, statement_xlsx, vat
from accounting.schemas import BILLING, COMPLIANCE
from storage.dataset import Store
from storage.errors import IntegrityError
from storage.manifest import SIGNATURE_SUFFIX, manifest_path, relative_path, sealed_periods

BILLING_DIR = "ledgers/billing"
COMPLIANCE_DIR = "ledgers/compliance"
USAGE_DIR = "usage_hourly"
_STATEMENT_COLUMNS = [
    "period",
    "entity",
    "project",
    "project_class",
    "gpu_model",
    "charge_class",
    "corrects_period",
    "rate_from",
    "rate_to",
    "gpu_hours",
    "list_rate_krw_per_gpu_hour",
    "discount_percent",
    "rate_krw_per_gpu_hour",
    "amount_krw",
]


class ExportError(AccountingError):
    """A month cannot be exported (not closed, or its files do not match the seal)."""


@dataclass(frozen=True, slots=True)
class EntityTotal:
    entity: str
    gpu_microseconds: int  # exact billed usage (usage and correction lines)
    usage_krw: Decimal
    correction_krw: Decimal

    @property
    def gpu_hours(self) -> Decimal:
        """Billed GPU-hours: the exact usage rounded once (the manifest's ``billed_gpu_hours``)."""
        return gpu_hours(self.gpu_microseconds)

    @property
    def total_krw(self) -> Decimal:
        return self.usage_krw + self.correction_krw


@dataclass(frozen=True, slots=True)
class ExportResult:
    period: str
    out_dir: Path
    finance_files: tuple[str, ...]
    auditor_files: tuple[str, ...]
    totals: tuple[EntityTotal, ...]


def period_files(store: Store, dataset_dir: str, period: str) -> list[str]:
    """Committed Parquet files of ``<dataset_dir>/period=<period>/`` (relative paths, sorted)."""
    prefix = store.path(dataset_dir, f"period={period}") + "/"
    return [relative_path(store, f) for f in store.files(dataset_dir) if f.startswith(prefix)]


def read_ledger(store: Store, dataset_dir: str, period: str, schema) -> pl.DataFrame:
    files = [store.path(f) for f in period_files(store, dataset_dir, period)]
    if not files:
        return pl.from_arrow(schema.empty_table())
    return pl.concat([pl.from_arrow(store.read_table(f).select(schema.names)) for f in files])


def entity_totals(billing: pl.DataFrame, entities: Sequence[str] = ()) -> list[EntityTotal]:
    """Exact per-entity totals of billing lines (integer µs and ``Decimal`` sums, sorted by entity)."""
    totals: dict[str, list] = {e: [0, Decimal(0), Decimal(0)] for e in entities}
    for row in billing.select("entity", "charge_class", "gpu_microseconds", "amount_krw").iter_rows():
        entity, charge_class, micros, amount = row
        acc = totals.setdefault(entity, [0, Decimal(0), Decimal(0)])
        acc[0] += int(micros)
        acc[1 if charge_class == "usage" else 2] += amount
    return [EntityTotal(e, *totals[e]) for e in sorted(totals)]


def export_month(
    store: Store,
    period: str,
    out_dir: Path | None = None,
    *,
    registry: Registry | None = None,
    registry_file: Path | None = None,
) -> ExportResult:
    """Write the finance and auditor packs of a sealed ``period``; see the module docstring."""
    if period not in sealed_periods(store):
        raise ExportError(f"{period} is not closed (no manifest {relative_path(store, manifest_path(store, period))})")
    target = Path(out_dir) if out_dir is not None else Path(store.root) / "exports"
    pack = Store(target / period)

    manifest_bytes = store.read_bytes(manifest_path(store, period))
    manifest = _json(manifest_bytes)
    sealed = {entry["path"]: entry for entry in manifest["files"]}

    auditor: list[str] = []
    sums: list[str] = []
    ledger_files = period_files(store, BILLING_DIR, period) + period_files(store, COMPLIANCE_DIR, period)
    usage_files = period_files(store, USAGE_DIR, period)
    sealed_usage = [p for p in usage_files if p in sealed]
    usage_to_copy = sealed_usage or usage_files
    for rel in ledger_files + usage_to_copy:
        data = store.read_bytes(store.path(rel))
        digest = hashlib.sha256(data).hexdigest()
        entry = sealed.get(rel)
        if entry is not None and entry["sha256"] != digest:
            raise IntegrityError(f"{rel} does not match the {period} manifest; run gpuledger verify")
        if entry is None and rel.startswith("ledgers/"):
            raise IntegrityError(f"{rel} is not sealed by the {period} manifest; run gpuledger verify")
        pack.write_bytes_atomic(pack.path("auditor", rel), data)
        auditor.append(f"auditor/{rel}")
        if entry is not None:
            sums.append(f"{digest}  {rel}")
    manifest_rel = relative_path(store, manifest_path(store, period))
    pack.write_bytes_atomic(pack.path("auditor", manifest_rel), manifest_bytes)
    auditor.append(f"auditor/{manifest_rel}")
    signature = manifest_path(store, period) + SIGNATURE_SUFFIX
    signed = store.exists(signature)
    if signed:
        pack.write_bytes_atomic(pack.path("auditor", manifest_rel + SIGNATURE_SUFFIX), store.read_bytes(signature))
        auditor.append(f"auditor/{manifest_rel}{SIGNATURE_SUFFIX}")
    if registry_file is not None:
        pack.write_bytes_atomic(pack.path("auditor", "registry.toml"), Path(registry_file).read_bytes())
        auditor.append("auditor/registry.toml")
    pack.write_bytes_atomic(pack.path("auditor", "SHA256SUMS"), ("\n".join(sorted(sums)) + "\n").encode())
    auditor.append("auditor/SHA256SUMS")

    # the ledgers are read only once every copied byte matched the seal
    billing = read_ledger(store, BILLING_DIR, period, BILLING)
    compliance = read_ledger(store, COMPLIANCE_DIR, period, COMPLIANCE)
    entities = sorted(set(billing["entity"].to_list()) | set(registry.entities if registry else ()))
    totals = entity_totals(billing, entities)
    finance = _write_finance(
        pack,
        _Finance(period, hashlib.sha256(manifest_bytes).hexdigest(), registry, is_simulated(store)),
        billing,
        compliance,
        totals,
    )

    readme = render_readme(
        period=period,
        totals=totals,
        rounding=registry.rounding if registry else RoundingRule.TRUNCATE,
        rounding_known=registry is not None,
        has_usage=bool(usage_to_copy),
        usage_sealed=bool(sealed_usage),
        has_compliance=compliance.height > 0,
        signed=signed,
        manifest_totals=manifest.get("totals", {}),
    )
    pack.write_bytes_atomic(pack.path("auditor", "README.md"), readme.encode())
    auditor.append("auditor/README.md")
    return ExportResult(period, target / period, tuple(finance), tuple(sorted(auditor)), tuple(totals))


@dataclass(frozen=True, slots=True)
class _Finance:
    period: str
    manifest_sha256: str
    registry: Registry | None
    simulated: bool

    @property
    def rounding(self) -> RoundingRule:
        return self.registry.rounding if self.registry else RoundingRule.TRUNCATE

    @property
    def vat_percent(self) -> Decimal:
        return self.registry.vat_percent if self.registry else Decimal(10)


def _write_finance(
    pack: Store, ctx: _Finance, billing: pl.DataFrame, compliance: pl.DataFrame, totals: Sequence[EntityTotal]
) -> list[str]:
    period = ctx.period
    figures = {f.entity: f for f in entity_figures(compliance, billing, ctx.registry)}
    lines: list[ProgrammeLine] = []
    for t in totals:
        lines.append(
            ProgrammeLine(
                entity=t.entity,
                display_name=display_name(ctx.registry, t.entity),
                number=statement_number(period, t.entity, ctx.manifest_sha256),
                billed_gpu_hours=t.gpu_hours,
                usage_krw=t.usage_krw,
                correction_krw=t.correction_krw,
                vat_krw=vat(t.total_krw, ctx.vat_percent, ctx.rounding),
            )
        )
    pack.write_bytes_atomic(pack.path("finance", "summary.csv"), _summary_csv(period, lines, figures).encode())
    written = ["finance/summary.csv"]
    ordered = billing.select(_STATEMENT_COLUMNS).sort(
        "charge_class", "corrects_period", "project", "gpu_model", "rate_from", nulls_last=False
    )
    for total, line in zip(totals, lines, strict=True):
        mine = ordered.filter(pl.col("entity") == total.entity)
        base = f"statement-{_safe(total.entity)}"
        header = StatementHeader(
            period, total.entity, line.display_name, line.number, ctx.manifest_sha256, ctx.rounding,
            ctx.vat_percent, ctx.simulated,
        )
        pack.write_bytes_atomic(pack.path("finance", f"{base}.csv"), mine.write_csv().encode())
        pack.write_bytes_atomic(pack.path("finance", f"{base}.xlsx"), statement_xlsx(header, mine, total.gpu_hours))
        written += [f"finance/{base}.csv", f"finance/{base}.xlsx"]
    national = [f for e, f in figures.items() if e in {t.entity for t in totals} or e == NATIONAL]
    workbook = programme_xlsx(
        period, ctx.manifest_sha256, lines, national,
        billing.sort("entity", "charge_class", "corrects_period", "project", "gpu_model", "rate_from", nulls_last=False),
        rounding=ctx.rounding, vat_percent=ctx.vat_percent, simulated=ctx.simulated,
    )
    pack.write_bytes_atomic(pack.path("finance", f"programme-{period}.xlsx"), workbook)
    written.append(f"finance/programme-{period}.xlsx")
    return written


_SUMMARY_HOURS = (
    "capacity_gpu_hours",
    "reported_gpu_hours",
    "attributed_gpu_hours",
    "unattributed_gpu_hours",
    "busy_gpu_hours",
    "idle_gpu_hours",
    "unreported_gpu_hours",
)


def _summary_csv(period: str, lines: Sequence[ProgrammeLine], figures: dict[str, EntityFigures]) -> str:
    """summary.csv: one row per entity in the one vocabulary, decimal strings exactly as the ledgers."""
    columns = ["period", "entity", "display_name", "statement_no", *_SUMMARY_HOURS, "billed_gpu_hours",
               "usage_krw", "correction_krw", "total_krw", "vat_krw", "total_with_vat_krw"]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for line in lines:
        f = figures.get(line.entity)
        hours = [str(getattr(f, name)) if f is not None else "0" for name in _SUMMARY_HOURS]
        total = line.usage_krw + line.correction_krw
        writer.writerow([period, line.entity, line.display_name, line.number, *hours, str(line.billed_gpu_hours),
                         str(line.usage_krw), str(line.correction_krw), str(total), str(line.vat_krw),
                         str(total + line.vat_krw)])
    return out.getvalue()


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _json(data: bytes) -> dict:
    return json.loads(data)




# -- the auditor README ---------------------------------------------------------------------
_ROUNDING_SQL = {
    RoundingRule.TRUNCATE: "q",
    RoundingRule.HALF_UP: "q + CASE WHEN 2 * r >= 360000000000 THEN 1 ELSE 0 END",
    RoundingRule.HALF_EVEN: (
        "q + CASE WHEN 2 * r > 360000000000 OR (2 * r = 360000000000 AND q % 2 = 1) THEN 1 ELSE 0 END"
    ),
}
_ROUNDING_PY = {
    RoundingRule.TRUNCATE: "ROUND_DOWN",
    RoundingRule.HALF_UP: "ROUND_HALF_UP",
    RoundingRule.HALF_EVEN: "ROUND_HALF_EVEN",
}


def render_readme(
    *,
    period: str,
    totals: Sequence[EntityTotal],
    rounding: RoundingRule,
    rounding_known: bool,
    has_usage: bool,
    usage_sealed: bool,
    has_compliance: bool,
    signed: bool,
    manifest_totals: dict[str, str],
) -> str:
    """The pack's README (``templates/auditor_readme.md.j2``): checks an auditor runs from the
    pack directory, with expected results.

    Every ``sql`` block runs as it stands in DuckDB from the pack's root; the first returns the
    statement totals shown above it, each other returns no rows when everything agrees (a test
    runs them on an exported pack).
    """
    rule_note = (
        f"The registry's rounding rule for this close is **{rounding}**."
        if rounding_known
        else f"The export was not given the registry; the query assumes the sample rule **{rounding}**"
        " (see `registry.toml`, `[billing] rounding`, and pick the matching line below)."
    )
    return render(
        "auditor_readme.md.j2",
        period=period,
        billing=f"ledgers/billing/period={period}/*.parquet",
        compliance=f"ledgers/compliance/period={period}/*.parquet",
        usage=f"usage_hourly/period={period}/*/*.parquet",
        totals=totals,
        grand=sum((t.total_krw for t in totals), Decimal(0)),
        rule_note=rule_note,
        rounding_sql=_ROUNDING_SQL[rounding],
        rounding_py=_ROUNDING_PY[rounding],
        has_usage=has_usage,
        usage_sealed=usage_sealed,
        has_compliance=has_compliance,
        signed=signed,
        manifest_totals=sorted(manifest_totals.items()),
    )
