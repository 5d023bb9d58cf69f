"""Finance and auditor packs of a closed month (``gpuledger export --month YYYY-MM``).

Layout under ``<out>/<YYYY-MM>/`` (default ``<out>`` = ``<data-dir>/exports``)::

    finance/summary.csv                    one line per entity: GPU-hours, usage, corrections, total KRW
    finance/statement-<entity>.csv         the entity's billing lines
    finance/statement-<entity>.xlsx        sheet "lines" (the same lines) and sheet "total"
    auditor/README.md                      how to check the hashes and re-derive every total
    auditor/SHA256SUMS                     ``sha256sum -c`` input for every copied sealed file
    auditor/manifests/YYYY-MM.json(.sig)   the period's manifest (and signature)
    auditor/ledgers/…, auditor/usage_hourly/…   copies, at the same relative paths as the manifest
    auditor/registry.toml                  the registry the close priced with (when given)

Invariants: only a sealed month is exported; every copied file is hashed while copied and
must match its manifest entry (else :class:`IntegrityError`); money is exact — CSV carries the
ledger's decimal strings, XLSX carries whole won as integers — and each entity's total equals
the sum of its ledger lines. Every byte goes through :class:`Store`, never a bare ``open``.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import polars as pl
import xlsxwriter

from accounting.errors import AccountingError
from accounting.registry import Registry, RoundingRule
from accounting.schemas import BILLING, COMPLIANCE
from storage.dataset import Store
from storage.errors import IntegrityError
from storage.manifest import SIGNATURE_SUFFIX, manifest_path, relative_path, sealed_periods

BILLING_DIR = "ledgers/billing"
COMPLIANCE_DIR = "ledgers/compliance"
USAGE_DIR = "usage_hourly"
_US_PER_HOUR = 3_600_000_000
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
    gpu_hours: Decimal
    usage_krw: Decimal
    correction_krw: Decimal

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
    """Exact per-entity totals of billing lines (Python ``Decimal`` sums, sorted by entity)."""
    totals: dict[str, list[Decimal]] = {e: [Decimal(0), Decimal(0), Decimal(0)] for e in entities}
    for row in billing.select("entity", "charge_class", "gpu_hours", "amount_krw").iter_rows():
        entity, charge_class, hours, amount = row
        acc = totals.setdefault(entity, [Decimal(0), Decimal(0), Decimal(0)])
        acc[0] += hours
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
    entities = sorted(set(billing["entity"].to_list()) | set(registry.entities if registry else ()))
    totals = entity_totals(billing, entities)
    finance = _write_finance(pack, period, billing, totals)

    compliance = read_ledger(store, COMPLIANCE_DIR, period, COMPLIANCE)
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


def _write_finance(pack: Store, period: str, billing: pl.DataFrame, totals: Sequence[EntityTotal]) -> list[str]:
    written = []
    summary = pl.DataFrame(
        {
            "period": [period] * len(totals),
            "entity": [t.entity for t in totals],
            "gpu_hours": [t.gpu_hours for t in totals],
            "usage_krw": [t.usage_krw for t in totals],
            "correction_krw": [t.correction_krw for t in totals],
            "total_krw": [t.total_krw for t in totals],
        },
        schema={
            "period": pl.String,
            "entity": pl.String,
            "gpu_hours": pl.Decimal(24, 6),
            "usage_krw": pl.Decimal(24, 0),
            "correction_krw": pl.Decimal(24, 0),
            "total_krw": pl.Decimal(24, 0),
        },
    )
    pack.write_bytes_atomic(pack.path("finance", "summary.csv"), summary.write_csv().encode())
    written.append("finance/summary.csv")
    ordered = billing.select(_STATEMENT_COLUMNS).sort(
        "charge_class", "corrects_period", "project", "gpu_model", "rate_from", nulls_last=False
    )
    for total in totals:
        lines = ordered.filter(pl.col("entity") == total.entity)
        base = f"statement-{_safe(total.entity)}"
        pack.write_bytes_atomic(pack.path("finance", f"{base}.csv"), lines.write_csv().encode())
        pack.write_bytes_atomic(pack.path("finance", f"{base}.xlsx"), _xlsx(period, lines, total))
        written += [f"finance/{base}.csv", f"finance/{base}.xlsx"]
    return written


def _xlsx(period: str, lines: pl.DataFrame, total: EntityTotal) -> bytes:
    """Workbook bytes: whole won as integers (exact in Excel), hours and rates as numbers."""
    sheet = lines.with_columns(
        pl.col("amount_krw").cast(pl.Int64),
        pl.col("gpu_hours", "list_rate_krw_per_gpu_hour", "discount_percent", "rate_krw_per_gpu_hour").cast(
            pl.Float64
        ),
    )
    summary = pl.DataFrame(
        {
            "period": [period],
            "entity": [total.entity],
            "gpu_hours": [float(total.gpu_hours)],
            "usage_krw": [int(total.usage_krw)],
            "correction_krw": [int(total.correction_krw)],
            "total_krw": [int(total.total_krw)],
        }
    )
    won = "#,##0"
    buffer = io.BytesIO()
    workbook = xlsxwriter.Workbook(buffer, {"in_memory": True})
    year, month = (int(x) for x in period.split("-"))
    workbook.set_properties(
        {"title": f"GPU statement {period} {total.entity}", "created": datetime(year, month, 1, tzinfo=UTC).replace(tzinfo=None)}
    )
    sheet.write_excel(
        workbook=workbook,
        worksheet="lines",
        column_formats={"amount_krw": won, "gpu_hours": "0.000000", "rate_krw_per_gpu_hour": "#,##0.00"},
        autofit=True,
    )
    summary.write_excel(
        workbook=workbook,
        worksheet="total",
        column_formats={"usage_krw": won, "correction_krw": won, "total_krw": won, "gpu_hours": "0.000000"},
        autofit=True,
    )
    workbook.close()
    return buffer.getvalue()


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
    """The pack's README: checks an auditor runs from the pack directory, with expected results.

    Every ``sql`` block runs as it stands in DuckDB from the pack's root; the first returns the
    statement totals shown above it, each other returns no rows when everything agrees (a test
    runs them on an exported pack).
    """
    billing = f"ledgers/billing/period={period}/*.parquet"
    compliance = f"ledgers/compliance/period={period}/*.parquet"
    usage = f"usage_hourly/period={period}/*/*.parquet"
    table = "\n".join(
        f"| {t.entity} | {t.gpu_hours} | {t.usage_krw} | {t.correction_krw} | {t.total_krw} |" for t in totals
    )
    grand = sum((t.total_krw for t in totals), Decimal(0))
    rule_note = (
        f"The registry's rounding rule for this close is **{rounding}**."
        if rounding_known
        else f"The export was not given the registry; the query assumes the sample rule **{rounding}**"
        " (see `registry.toml`, `[billing] rounding`, and pick the matching line below)."
    )
    parts = [
        f"# Auditor pack — gpuledger, period {period}",
        "",
        f"This pack holds the billing and compliance ledgers of the KST month {period}, the hourly",
        "usage they were computed from, and the period's sealed manifest. Everything below runs",
        "from this directory (the one holding this README).",
        "",
        "| path | what |",
        "|---|---|",
        f"| `manifests/{period}.json` | the seal: SHA-256, rows and Arrow schema of every file, the period's totals, the SHA-256 of the previous period's manifest (`previous`) |",
        f"| `manifests/{period}.json.sig` | {'Ed25519 signature (64 raw bytes) over the manifest bytes' if signed else '(not signed: the operator sealed without a key)'} |",
        "| `SHA256SUMS` | the manifest's hashes of the files in this pack, for `sha256sum -c` |",
        "| `ledgers/billing/…` | billing lines: period × entity × project × GPU model × rate segment × charge class |",
        "| `ledgers/compliance/…` | allocated / capacity / reported / busy / idle / unreported GPU-hours per entity × model |",
        f"| `usage_hourly/…` | hourly usage per device ({'sealed by the manifest' if usage_sealed else 'copied as found: the manifest does not seal hourly usage'}) |",
        "",
        "## 1. Nothing was altered",
        "",
        "```sh",
        "sha256sum -c SHA256SUMS",
        f"sha256sum manifests/{period}.json   # equals previous.sha256 in the next period's manifest",
    ]
    if signed:
        parts += [
            "# with the operator's public key (PEM), OpenSSL 3:",
            f"openssl pkeyutl -verify -pubin -inkey operator.pub.pem -rawin -in manifests/{period}.json -sigfile manifests/{period}.json.sig",
        ]
    parts += [
        "```",
        "",
        "On the operator's data directory, `gpuledger verify --public-key operator.pub.pem` re-hashes",
        "every sealed file of every period and walks the whole chain.",
        "",
        "## 2. Re-derive every total with DuckDB",
        "",
        "Run each query with the `duckdb` CLI or `python -c \"import duckdb; print(duckdb.sql('''…'''))\"`.",
        "",
        "### Statement totals per entity (KRW)",
        "",
        "Expected — the same figures as `../finance/summary.csv` and the manifest's `totals`:",
        "",
        "| entity | gpu_hours | usage_krw | correction_krw | total_krw |",
        "|---|---|---|---|---|",
        table,
        "",
        f"All entities together: **{grand} KRW**.",
        "",
        "```sql",
        "SELECT entity,",
        "       sum(gpu_hours) AS gpu_hours,",
        "       coalesce(sum(amount_krw) FILTER (WHERE charge_class = 'usage'), 0) AS usage_krw,",
        "       coalesce(sum(amount_krw) FILTER (WHERE charge_class = 'correction'), 0) AS correction_krw,",
        "       sum(amount_krw) AS total_krw",
        f"FROM read_parquet('{billing}')",
        "GROUP BY entity",
        "ORDER BY entity;",
        "```",
        "",
        "### Every line's amount from its usage and rate",
        "",
        "`amount_krw` is `gpu_microseconds × rate_krw_per_gpu_hour / 3,600,000,000` rounded once to",
        f"whole won. {rule_note} The query is exact integer arithmetic (rate in hundredths of a won)",
        "and returns the lines that disagree: expect **no rows**.",
        "",
        "```sql",
        "WITH lines AS (",
        "    SELECT *, gpu_microseconds::HUGEINT * CAST(rate_krw_per_gpu_hour * 100 AS HUGEINT) AS n",
        f"    FROM read_parquet('{billing}')",
        "), parts AS (",
        "    SELECT *, abs(n) // 360000000000 AS q, abs(n) % 360000000000 AS r FROM lines",
        ")",
        "SELECT entity, project, gpu_model, charge_class, rate_from, amount_krw,",
        f"       sign(n) * ({_ROUNDING_SQL[rounding]}) AS recomputed_krw",
        "FROM parts",
        f"WHERE amount_krw <> sign(n) * ({_ROUNDING_SQL[rounding]});",
        "```",
        "",
        "Other rules: truncate → `q`; half_up → `q + (2r ≥ d)`; half_even → `q + (2r > d or (2r = d and q odd))`,",
        "with `d = 360000000000`.",
    ]
    if has_usage:
        parts += [
            "",
            "### Billed usage equals the hourly usage",
            "",
            "Usage lines bill every GPU-microsecond of hourly usage of a registered project (usage no",
            "job could be attributed to is `unattributed`, never billed). Returns the differences:",
            "expect **no rows**.",
            "",
            "```sql",
            "WITH used AS (",
            "    SELECT entity, project, gpu_model, sum(gpu_microseconds) AS used_us",
            f"    FROM read_parquet('{usage}')",
            "    WHERE project <> 'unattributed'",
            "    GROUP BY entity, project, gpu_model",
            "), billed AS (",
            "    SELECT entity, project, gpu_model, sum(gpu_microseconds) AS billed_us",
            f"    FROM read_parquet('{billing}')",
            "    WHERE charge_class = 'usage'",
            "    GROUP BY entity, project, gpu_model",
            ")",
            "SELECT * FROM used FULL OUTER JOIN billed USING (entity, project, gpu_model)",
            "WHERE used_us IS DISTINCT FROM billed_us;",
            "```",
        ]
    if has_usage and has_compliance:
        parts += [
            "",
            "### Compliance hours from the hourly usage",
            "",
            "Reported, busy, attributed and unattributed GPU-hours per entity × model (hours are",
            "micro-seconds / 3.6e9, rounded to 6 places). Returns the differences: expect **no rows**.",
            "",
            "```sql",
            "WITH used AS (",
            "    SELECT entity, gpu_model,",
            "           sum(gpu_microseconds) AS reported_us,",
            "           sum(busy_gpu_microseconds) AS busy_us,",
            "           sum(gpu_microseconds) FILTER (WHERE project <> 'unattributed') AS attributed_us",
            f"    FROM read_parquet('{usage}')",
            "    GROUP BY entity, gpu_model",
            ")",
            "SELECT c.entity, c.gpu_model, c.reported_gpu_hours, u.reported_us, c.busy_gpu_hours, u.busy_us",
            f"FROM read_parquet('{compliance}') AS c",
            "JOIN used AS u USING (entity, gpu_model)",
            "WHERE abs(c.reported_gpu_hours - u.reported_us / 3600000000.0) > 0.000001",
            "   OR abs(c.busy_gpu_hours - u.busy_us / 3600000000.0) > 0.000001",
            "   OR abs(c.attributed_gpu_hours - coalesce(u.attributed_us, 0) / 3600000000.0) > 0.000001",
            "   OR abs(c.unattributed_gpu_hours - (u.reported_us - coalesce(u.attributed_us, 0)) / 3600000000.0) > 0.000001;",
            "```",
        ]
    parts += [
        "",
        "## 3. The same with Polars",
        "",
        "```python",
        "from decimal import Decimal, ROUND_DOWN, ROUND_HALF_EVEN, ROUND_HALF_UP",
        "import polars as pl",
        "",
        f'billing = pl.read_parquet("{billing}")',
        'totals = billing.group_by("entity").agg(pl.col("amount_krw").sum().alias("total_krw")).sort("entity")',
        "print(totals)",
        "",
        f"rule = {_ROUNDING_PY[rounding]}  # the registry's [billing] rounding",
        "for line in billing.iter_rows(named=True):",
        '    exact = Decimal(line["gpu_microseconds"]) * line["rate_krw_per_gpu_hour"] / Decimal(3_600_000_000)',
        '    assert exact.quantize(Decimal(1), rounding=rule) == line["amount_krw"], line',
        "```",
        "",
        "## Manifest totals",
        "",
        "The manifest records these totals, as sealed by the close:",
        "",
        "```",
        *[f"{k} = {v}" for k, v in sorted(manifest_totals.items())],
        "```",
        "",
    ]
    return "\n".join(parts)
