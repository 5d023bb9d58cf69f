"""Finance and auditor packs of a closed month (``gpuledger export --month YYYY-MM``).

Layout under ``<out>/<YYYY-MM>/`` (default ``<out>`` = ``<data-dir>/exports``)::

    finance/summary.csv                    one line per entity: the usage vocabulary (capacity, reported,
                                           attributed, unattributed, busy, idle, unreported GPU-hours),
                                           billed GPU-hours, usage / corrections / total KRW, VAT, statement no.
    finance/statement-<entity>.csv         the entity's billing lines (the ledger's columns)
    finance/statement-<entity>.xlsx|.pdf   the entity's monthly statement, 거래명세서 (accounting/statements.py)
    finance/sub-accounts/statement-<entity>-<project>.csv|.xlsx|.pdf   a state-pool project's own statement
    finance/sub-accounts.csv               one line per sub-account (they sum to their entity's statement)
    finance/programme-<YYYY-MM>.xlsx       one consolidated workbook: billing, usage, every line, terms
    auditor/README.md                      how to check the hashes and re-derive every total
    auditor/SHA256SUMS                     ``sha256sum -c`` input for every copied sealed file
    auditor/manifests/YYYY-MM.json(.sig)   the period's manifest (and signature)
    auditor/ledgers/…, auditor/usage_hourly/…   copies, at the same relative paths as the manifest
    auditor/registry.toml                  the registry the close priced with (the sealed copy)
    auditor/raw/…, auditor/raw-events.sha256   with ``--raw-events``: the month's raw events (Parquet) the
                                           close read, their SHA-256 as recorded at commit (accounting/rawpack.py)

Invariants: only a sealed month is exported; every copied file is hashed while copied and
must match its manifest entry (else :class:`IntegrityError`); money is exact — whole won, as
integers in XLSX — and each entity's total equals the sum of its ledger lines. The billing
truth is the ledger: amounts are its lines' whole-won ``amount_krw`` summed; billed GPU-hours
are its lines' exact ``gpu_microseconds`` summed and rounded once: to 6 places in the manifest
and the pack README, to 2 places in what a person reads (summary.csv, the statements, the
programme workbook: :mod:`accounting.figures`). Statement CSVs carry the ledger's own decimal
strings. Every CSV is UTF-8 with a byte-order mark (Excel then shows Korean). Every byte goes
through :class:`Store`, never a bare ``open``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import polars as pl

from accounting.billing import gpu_hours
from accounting.errors import AccountingError
from accounting.figures import EntityFigures, entity_figures, is_simulated, shown_hours
from accounting.rawpack import export_raw_events, raw_events_readme
from accounting.registry import NATIONAL, Registry, RoundingRule
from accounting.sealed import registry_copy_path, registry_for
from accounting.statement_pdf import statement_pdf
from accounting.statements import Statement, SubAccount, build_statement, sub_statement
from accounting.templating import render
from accounting.workbooks import ProgrammeLine, programme_xlsx, statement_xlsx
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
    registry_explicit: bool = False,
    raw_events: bool = False,
) -> ExportResult:
    """Write the finance and auditor packs of a sealed ``period``; see the module docstring.

    The month speaks with the registry it was sealed with (:func:`accounting.sealed.registry_for`):
    an explicitly given ``registry`` that differs is refused. ``raw_events`` adds the month's
    raw events to the auditor pack (:mod:`accounting.rawpack`).
    """
    if period not in sealed_periods(store):
        raise ExportError(f"{period} is not closed (no manifest {relative_path(store, manifest_path(store, period))})")
    registry = registry_for(store, period, registry, explicit=registry_explicit)
    target = Path(out_dir) if out_dir is not None else Path(store.root) / "exports"
    pack = Store(target / period)
    manifest_bytes = store.read_bytes(manifest_path(store, period))
    manifest = _json(manifest_bytes)
    copied = _copy_sealed(store, pack, period, manifest_bytes, registry_file)
    raw = export_raw_events(store, period, manifest, pack) if raw_events else []
    pack.write_bytes_atomic(pack.path("auditor", "SHA256SUMS"), ("\n".join(sorted(copied.sums)) + "\n").encode())

    # the ledgers are read only once every copied byte matched the seal
    billing = read_ledger(store, BILLING_DIR, period, BILLING)
    compliance = read_ledger(store, COMPLIANCE_DIR, period, COMPLIANCE)
    entities = sorted(set(billing["entity"].to_list()) | set(registry.entities if registry else ()))
    totals = entity_totals(billing, entities)
    manifest_sha256 = hashlib.sha256(manifest_bytes).hexdigest()
    # a month sealed before content_sha256 existed keeps the number it was issued with
    ctx = _Finance(period, manifest_sha256, registry, is_simulated(store), manifest.get("content_sha256") or manifest_sha256)
    finance = _write_finance(pack, ctx, billing, compliance, totals)

    readme = render_readme(
        period=period,
        totals=totals,
        rounding=ctx.rounding,
        rounding_known=registry is not None,
        has_usage=copied.has_usage,
        usage_sealed=copied.usage_sealed,
        has_compliance=compliance.height > 0,
        signed=copied.signed,
        manifest_totals=manifest.get("totals", {}),
    )
    if raw_events:
        readme += raw_events_readme(period, manifest)
    pack.write_bytes_atomic(pack.path("auditor", "README.md"), readme.encode())
    auditor = sorted([*copied.files, *raw, "auditor/SHA256SUMS", "auditor/README.md"])
    return ExportResult(period, target / period, tuple(finance), tuple(auditor), tuple(totals))


@dataclass(frozen=True, slots=True)
class _Copied:
    files: tuple[str, ...]
    sums: tuple[str, ...]  # SHA256SUMS lines of the copied files the manifest seals
    has_usage: bool
    usage_sealed: bool
    signed: bool


def _copy_sealed(store: Store, pack: Store, period: str, manifest_bytes: bytes, registry_file: Path | None) -> _Copied:
    """Copy the period's ledgers, hourly usage, sealed registry, manifest (+ signature) to ``auditor/``,
    hashing each file while copied: a ledger file that is not sealed, or any sealed file that does
    not match its manifest entry, stops the export (:class:`IntegrityError`)."""
    sealed = {entry["path"]: entry for entry in _json(manifest_bytes)["files"]}
    usage_files = period_files(store, USAGE_DIR, period)
    sealed_usage = [p for p in usage_files if p in sealed]
    sealed_registry_rel = relative_path(store, registry_copy_path(store, period))
    registry_copy = [sealed_registry_rel] if sealed_registry_rel in sealed else []
    files: list[str] = []
    sums: list[str] = []
    ledger_files = period_files(store, BILLING_DIR, period) + period_files(store, COMPLIANCE_DIR, period)
    for rel in ledger_files + (sealed_usage or usage_files) + registry_copy:
        data = store.read_bytes(store.path(rel))
        digest = hashlib.sha256(data).hexdigest()
        entry = sealed.get(rel)
        if entry is not None and entry["sha256"] != digest:
            raise IntegrityError(f"{rel} does not match the {period} manifest; run gpuledger verify")
        if entry is None and rel.startswith("ledgers/"):
            raise IntegrityError(f"{rel} is not sealed by the {period} manifest; run gpuledger verify")
        pack.write_bytes_atomic(pack.path("auditor", rel), data)
        files.append(f"auditor/{rel}")
        if entry is not None:
            sums.append(f"{digest}  {rel}")
    manifest_rel = relative_path(store, manifest_path(store, period))
    extra = {manifest_rel: manifest_bytes}
    signature = manifest_path(store, period) + SIGNATURE_SUFFIX
    signed = store.exists(signature)
    if signed:
        extra[manifest_rel + SIGNATURE_SUFFIX] = store.read_bytes(signature)
    if registry_copy:  # the registry the close priced with, sealed (also at its sealed path)
        extra["registry.toml"] = store.read_bytes(store.path(sealed_registry_rel))
    elif registry_file is not None and Path(registry_file).exists():  # sealed before registries were
        extra["registry.toml"] = Path(registry_file).read_bytes()
    for rel, data in extra.items():
        pack.write_bytes_atomic(pack.path("auditor", rel), data)
        files.append(f"auditor/{rel}")
    return _Copied(tuple(files), tuple(sums), bool(usage_files), bool(sealed_usage), signed)


@dataclass(frozen=True, slots=True)
class _Finance:
    period: str
    manifest_sha256: str
    registry: Registry | None
    simulated: bool
    content_sha256: str  # what was sealed, whatever bus or batches carried it: statement numbers

    @property
    def rounding(self) -> RoundingRule:
        return self.registry.rounding if self.registry else RoundingRule.TRUNCATE

    @property
    def vat_percent(self) -> Decimal:
        return self.registry.vat_percent if self.registry else Decimal(10)


def _write_finance(
    pack: Store, ctx: _Finance, billing: pl.DataFrame, compliance: pl.DataFrame, totals: Sequence[EntityTotal]
) -> list[str]:
    """summary.csv, per entity its statement (CSV, XLSX, PDF) and its sub-accounts', the programme workbook."""
    period = ctx.period
    figures = {f.entity: f for f in entity_figures(compliance, billing, ctx.registry)}
    ordered = billing.sort("charge_class", "corrects_period", "project", "gpu_model", "rate_from", nulls_last=False)
    statements = [
        build_statement(period, t.entity, ordered.filter(pl.col("entity") == t.entity), registry=ctx.registry,
                        manifest_sha256=ctx.manifest_sha256, content_sha256=ctx.content_sha256,
                        simulated=ctx.simulated)
        for t in totals
    ]
    lines = [_programme_line(s) for s in statements]
    written = [_write(pack, "summary.csv", csv_bytes(_summary_rows(period, lines, figures)))]
    for statement in statements:
        written += _write_statement(pack, statement, ordered.filter(pl.col("entity") == statement.entity))
    subs = [(s, sub) for s in statements for sub in s.sub_accounts]
    if subs:
        written.append(_write(pack, "sub-accounts.csv", csv_bytes(_sub_account_rows(period, subs))))
    national = [f for e, f in figures.items() if e in {t.entity for t in totals} or e == NATIONAL]
    workbook = programme_xlsx(
        period, ctx.manifest_sha256, lines, national,
        billing.sort("entity", "charge_class", "corrects_period", "project", "gpu_model", "rate_from", nulls_last=False),
        rounding=ctx.rounding, vat_percent=ctx.vat_percent, simulated=ctx.simulated,
    )
    written.append(_write(pack, f"programme-{period}.xlsx", workbook))
    return written


def _write(pack: Store, name: str, data: bytes) -> str:
    pack.write_bytes_atomic(pack.path("finance", *name.split("/")), data)
    return f"finance/{name}"


def _write_statement(pack: Store, statement: Statement, rows: pl.DataFrame) -> list[str]:
    """``statement-<entity>.{csv,xlsx,pdf}``; each sub-account's under ``sub-accounts/``."""
    base = f"statement-{_safe(statement.entity)}"
    written = [
        _write(pack, f"{base}.csv", csv_bytes(_frame_rows(rows.select(_STATEMENT_COLUMNS)))),
        _write(pack, f"{base}.xlsx", statement_xlsx(statement)),
        _write(pack, f"{base}.pdf", statement_pdf(statement)),
    ]
    for sub in statement.sub_accounts:
        mine = sub_statement(statement, sub)
        name = f"sub-accounts/{base}-{_safe(sub.project)}"
        project_rows = rows.filter(pl.col("project") == sub.project).select(_STATEMENT_COLUMNS)
        written += [
            _write(pack, f"{name}.csv", csv_bytes(_frame_rows(project_rows))),
            _write(pack, f"{name}.xlsx", statement_xlsx(mine)),
            _write(pack, f"{name}.pdf", statement_pdf(mine)),
        ]
    return written


def _programme_line(s: Statement) -> ProgrammeLine:
    return ProgrammeLine(s.entity, s.display_name, s.number, s.billed_gpu_microseconds, s.usage_krw, s.correction_krw,
                         s.vat_krw)


_SUMMARY_HOURS = (
    "capacity_gpu_hours",
    "reported_gpu_hours",
    "attributed_gpu_hours",
    "unattributed_gpu_hours",
    "busy_gpu_hours",
    "idle_gpu_hours",
    "unreported_gpu_hours",
)


def csv_bytes(rows: Iterable[Sequence[str]]) -> bytes:
    """CSV for a finance office: UTF-8 with a byte-order mark, so Excel opens Korean intact; CRLF-free."""
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return ("\ufeff" + out.getvalue()).encode("utf-8")


def _frame_rows(frame: pl.DataFrame) -> list[list[str]]:
    """A ledger frame's rows as the ledger's own decimal strings (nulls empty), header first."""
    text = frame.with_columns(pl.all().cast(pl.String))
    return [frame.columns, *[["" if v is None else v for v in row] for row in text.iter_rows()]]


def _summary_rows(period: str, lines: Sequence[ProgrammeLine], figures: dict[str, EntityFigures]) -> list[list[str]]:
    """summary.csv: one row per entity in the one vocabulary, one format per column: GPU-hours with 2
    places (``0.00``, ``384.00``), won as whole numbers."""
    columns = ["period", "entity", "display_name", "statement_no", *_SUMMARY_HOURS, "billed_gpu_hours",
               "usage_krw", "correction_krw", "total_krw", "vat_krw", "total_with_vat_krw"]
    rows = [columns]
    for line in lines:
        f = figures.get(line.entity)
        hours = [_hours_cell(getattr(f, name) if f is not None else Decimal(0)) for name in _SUMMARY_HOURS]
        total = line.usage_krw + line.correction_krw
        rows.append([period, line.entity, line.display_name, line.number, *hours, _hours_cell(line.billed_hours_shown),
                     _won_cell(line.usage_krw), _won_cell(line.correction_krw), _won_cell(total),
                     _won_cell(line.vat_krw), _won_cell(total + line.vat_krw)])
    return rows


def _sub_account_rows(period: str, subs: Sequence[tuple[Statement, SubAccount]]) -> list[list[str]]:
    """sub-accounts.csv: one row per sub-account; per entity they sum to its statement to the won."""
    rows = [["period", "entity", "entity_statement_no", "project", "recipient", "statement_no", "billed_gpu_hours",
             "subtotal_krw", "vat_krw", "total_krw"]]
    for parent, sub in subs:
        rows.append([period, parent.entity, parent.number, sub.project, sub.recipient_name, sub.number,
                     _hours_cell(sub.billed_hours_shown), _won_cell(sub.subtotal_krw), _won_cell(sub.vat_krw),
                     _won_cell(sub.total_krw)])
    return rows


def _hours_cell(value: Decimal) -> str:
    return f"{shown_hours(value):.2f}"


def _won_cell(value: Decimal) -> str:
    return f"{value:.0f}" if value == value.to_integral_value() else str(value)


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
