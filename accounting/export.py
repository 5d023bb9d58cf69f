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
    auditor/registry.toml                  the registry the close priced with (the sealed copy)
    auditor/raw/…, auditor/raw-events.sha256   with ``--raw-events``: the month's raw events (Parquet) the
                                           close read, their SHA-256 as recorded at commit (accounting/rawpack.py)

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
from accounting.rawpack import export_raw_events, raw_events_readme
from accounting.registry import NATIONAL, Registry, RoundingRule
from accounting.sealed import registry_copy_path, registry_for
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
    sealed_registry_rel = relative_path(store, registry_copy_path(store, period))
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
    registry_copy = [sealed_registry_rel] if sealed_registry_rel in sealed else []
    for rel in ledger_files + usage_to_copy + registry_copy:
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
    if registry_copy:  # the registry the close priced with, sealed (also at its sealed path)
        pack.write_bytes_atomic(pack.path("auditor", "registry.toml"), store.read_bytes(store.path(sealed_registry_rel)))
        auditor.append("auditor/registry.toml")
    elif registry_file is not None and Path(registry_file).exists():  # sealed before registries were
        pack.write_bytes_atomic(pack.path("auditor", "registry.toml"), Path(registry_file).read_bytes())
        auditor.append("auditor/registry.toml")
    if raw_events:
        auditor.extend(export_raw_events(store, period, manifest, pack))
    pack.write_bytes_atomic(pack.path("auditor", "SHA256SUMS"), ("\n".join(sorted(sums)) + "\n").encode())
    auditor.append("auditor/SHA256SUMS")

    # the ledgers are read only once every copied byte matched the seal
    billing = read_ledger(store, BILLING_DIR, period, BILLING)
    compliance = read_ledger(store, COMPLIANCE_DIR, period, COMPLIANCE)
    entities = sorted(set(billing["entity"].to_list()) | set(registry.entities if registry else ()))
    totals = entity_totals(billing, entities)
    finance = _write_finance(
        pack,
        _Finance(period, hashlib.sha256(manifest_bytes).hexdigest(), registry, is_simulated(store),
                 # a month sealed before content_sha256 existed keeps the number it was issued with
                 manifest.get("content_sha256") or hashlib.sha256(manifest_bytes).hexdigest()),
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
    if raw_events:
        readme += raw_events_readme(period, manifest)
    pack.write_bytes_atomic(pack.path("auditor", "README.md"), readme.encode())
    auditor.append("auditor/README.md")
    return ExportResult(period, target / period, tuple(finance), tuple(sorted(auditor)), tuple(totals))


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
    period = ctx.period
    figures = {f.entity: f for f in entity_figures(compliance, billing, ctx.registry)}
    lines: list[ProgrammeLine] = []
    for t in totals:
        lines.append(
            ProgrammeLine(
                entity=t.entity,
                display_name=display_name(ctx.registry, t.entity),
                number=statement_number(period, t.entity, ctx.content_sha256),
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
        "Expected — the same figures as `../finance/summary.csv`, the statements and the manifest's",
        "`totals` (`billed_gpu_hours.<entity>`, `amount_krw.<entity>`), to the last digit. Billed",
        "GPU-hours are the lines' exact `gpu_microseconds` summed, then rounded once (half-even, 6",
        "places): never the sum of the lines' already-rounded `gpu_hours`.",
        "",
        "| entity | billed_gpu_hours | usage_krw | correction_krw | total_krw |",
        "|---|---|---|---|---|",
        table,
        "",
        f"All entities together: **{grand} KRW**.",
        "",
        "```sql",
        "WITH t AS (",
        "    SELECT entity, sum(gpu_microseconds)::HUGEINT AS us,",
        "           coalesce(sum(amount_krw) FILTER (WHERE charge_class = 'usage'), 0) AS usage_krw,",
        "           coalesce(sum(amount_krw) FILTER (WHERE charge_class = 'correction'), 0) AS correction_krw,",
        "           sum(amount_krw) AS total_krw",
        f"    FROM read_parquet('{billing}')",
        "    GROUP BY entity",
        ")",
        "SELECT entity,",
        "       (us // 3600 + CASE WHEN us % 3600 > 1800 OR (us % 3600 = 1800 AND (us // 3600) % 2 = 1)",
        "                          THEN 1 ELSE 0 END)::DECIMAL(24, 0) * 0.000001::DECIMAL(7, 6) AS billed_gpu_hours,",
        "       usage_krw, correction_krw, total_krw",
        "FROM t",
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
