"""The monthly report a person reads (``gpuledger report --month YYYY-MM``).

From a closed month's compliance and billing ledgers it draws three PNG charts and one
self-contained HTML page (charts embedded as base64, tables inline, no network, printable on
A4) under ``<out>/<YYYY-MM>/`` (default ``<out>`` = ``<data-dir>/reports``)::

    usage-by-entity.png        capacity split into busy / idle / unreported GPU-hours per entity
    utilisation-coverage.png   utilisation (busy / reported) and coverage (reported / capacity)
                               per entity, with the registry's thresholds when known
    top-projects.png           the ten projects with the most billed GPU-hours
    report.html                "GPU 사용 보고서": a "simulated data" banner when it is, the seal
                               (manifest SHA-256 and verify status), the definitions, findings
                               as sentences, nodes with reporting gaps, the tables, the charts

The page speaks the one vocabulary of every gpuledger output (:data:`TERMS`): capacity,
reported = busy + idle = attributed + unattributed (never billed), unreported, billed
GPU-hours and amount. Entities appear by the registry's ``display_name``; breaches as
sentences (:func:`findings`), never as bare codes.

Korean text must render: matplotlib draws missing glyphs as empty boxes and only *warns*
("Glyph … missing from font(s)"), so every figure is saved under a warnings recorder and any
missing-glyph warning is an error (:class:`ReportError`). The NanumGothic font comes from the
``koreanize-matplotlib`` package (located, not imported: its import needs ``distutils`` and
rewrites global ``rcParams``) or from a system install (Debian ``fonts-nanum``). Matplotlib
is imported inside :func:`render_report` with the Agg backend; nothing happens at import time.
"""

from __future__ import annotations

import base64
import hashlib
import html
import importlib.util
import io
import logging
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl

from accounting.billing import gpu_hours
from accounting.errors import AccountingError
from accounting.export import BILLING_DIR, COMPLIANCE_DIR, read_ledger
from accounting.figures import (
    NATIONAL_LABEL,
    TERMS,
    EntityFigures,
    display_name,
    entity_figures,
    is_simulated,
    kst_span,
)
from accounting.figures import pct as _pct
from accounting.registry import NATIONAL, Registry, Thresholds
from accounting.schemas import BILLING, COMPLIANCE
from accounting.usage import parse_month
from storage.dataset import Store
from storage.manifest import manifest_path, sealed_periods, verify
from storage.schemas import USAGE_HOURLY

FONT_FAMILY = "NanumGothic"
TITLE = "GPU 사용 보고서"
TOP_PROJECTS = 10
MAX_GAP_NODES = 20
_COLOURS = {"busy": "#2b6cb0", "idle": "#f6ad55", "unreported": "#a0aec0"}
_KST = timedelta(hours=9)

class ReportError(AccountingError):
    """The report cannot be drawn (no ledgers for the month, or Korean text would not render)."""


@dataclass(frozen=True, slots=True)
class Finding:
    """One breach of one entity × GPU model, said in Korean and English."""

    entity: str
    gpu_model: str
    breach: str
    korean: str
    english: str


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
class ReportResult:
    period: str
    out_dir: Path
    files: tuple[str, ...]
    entities: tuple[EntityFigures, ...]
    findings: tuple[Finding, ...] = ()
    node_gaps: tuple[NodeGap, ...] = ()
    seal: SealStatus | None = None
    simulated: bool = False


def top_projects(billing: pl.DataFrame, limit: int = TOP_PROJECTS) -> list[tuple[str, str, Decimal, Decimal]]:
    """(entity, project, GPU-hours, KRW) of the projects billed most GPU-hours (ties by name)."""
    acc: dict[tuple[str, str], list[Any]] = {}
    for entity, project, us, amount in billing.select("entity", "project", "gpu_microseconds", "amount_krw").iter_rows():
        pair = acc.setdefault((entity, project), [0, Decimal(0)])
        pair[0] += int(us)
        pair[1] += amount
    ranked = sorted(acc.items(), key=lambda item: (-item[1][0], item[0]))
    return [(e, p, gpu_hours(us), a) for (e, p), (us, a) in ranked[:limit]]


# -- findings: breaches as sentences ----------------------------------------------------------
def findings(compliance: pl.DataFrame, registry: Registry | None = None) -> list[Finding]:
    """Every breach of every entity × GPU model as a sentence (national rows: threshold breaches only)."""
    thresholds = registry.thresholds if registry is not None else None
    found = []
    for row in compliance.sort("entity", "gpu_model").iter_rows(named=True):
        for breach in row["breaches"] or []:
            if row["entity"] == NATIONAL and breach not in ("under_use", "low_coverage"):
                continue  # the union of the entities' own breaches, already said
            korean, english = breach_sentence(breach, row, display_name(registry, row["entity"]), thresholds)
            found.append(Finding(row["entity"], row["gpu_model"], breach, korean, english))
    return sorted(found, key=lambda f: (f.entity == NATIONAL, f.entity, f.gpu_model, f.breach))


def breach_sentence(breach: str, row: dict[str, Any], name: str, thresholds: Thresholds | None) -> tuple[str, str]:
    """(Korean, English) sentence for one breach of one compliance-ledger row."""
    model = row["gpu_model"]
    gpus = row["allocated_gpus"] or 0
    rep = row["reported_gpu_hours"] or Decimal(0)
    unrep = row["unreported_gpu_hours"] or Decimal(0)
    busy = row["busy_gpu_hours"] or Decimal(0)
    quarantined = row.get("quarantined_gpu_hours") or Decimal(0)
    where_ko, where_en = f"{name} · {model}", f"{name}, {model}"
    if breach == "low_coverage":
        rule, rule_en = _rule(thresholds.low_coverage_below if thresholds else None, row["coverage"])
        return (
            f"{where_ko}: 보고율 {_pct(row['coverage'])}로 기준 {rule} 미만입니다. 할당 {gpus:,} GPU 중 "
            f"{unrep:,.0f} GPU·시간이 보고되지 않았습니다 (장애·정지 또는 수집기 없음).",
            f"{where_en}: coverage {_pct(row['coverage'])} is below {rule_en}: {unrep:,.0f} GPU-hours of its "
            f"{gpus:,} allocated GPUs reported nothing (down, stopped, or no collector).",
        )
    if breach == "under_use":
        rule, rule_en = _rule(thresholds.under_use_below if thresholds else None, row["utilisation"])
        return (
            f"{where_ko}: 활용률 {_pct(row['utilisation'])}로 기준 {rule} 미만입니다. 보고된 {rep:,.0f} GPU·시간 중 "
            f"가동은 {busy:,.0f} GPU·시간입니다.",
            f"{where_en}: utilisation {_pct(row['utilisation'])} is below {rule_en}: {busy:,.0f} busy of "
            f"{rep:,.0f} reported GPU-hours.",
        )
    if breach == "over_allocation":
        return (
            f"{where_ko}: 어떤 시간에는 할당된 {gpus:,} GPU보다 많은 GPU가 사용을 보고했습니다 (할당 초과).",
            f"{where_en}: in some hours more GPUs reported usage than the {gpus:,} allocated (over allocation).",
        )
    if breach == "unregistered_entity":
        return (
            f"{where_ko}: 등록부에 없는 기관의 사용량 {quarantined:,.1f} GPU·시간이 거부되어 격리되었습니다.",
            f"{where_en}: usage of an entity not in the registry was refused ({quarantined:,.1f} GPU-hours in quarantine).",
        )
    if breach == "unregistered_project":
        return (
            f"{where_ko}: 등록되지 않은(또는 다른 기관의) 프로젝트 사용량 {quarantined:,.1f} GPU·시간이 "
            "거부되어 격리되었습니다. 등록부를 고친 뒤 quarantine replay로 다시 받을 수 있습니다.",
            f"{where_en}: usage of projects not registered to it was refused ({quarantined:,.1f} GPU-hours in "
            "quarantine); amend the registry and run quarantine replay.",
        )
    if breach == "gpu_oversubscribed":
        return (
            f"{where_ko}: 한 물리 GPU의 장치들이 한 시간보다 많은 GPU 시간을 보고했습니다 (수집기 점검 필요).",
            f"{where_en}: the devices of one physical GPU reported more GPU-time than the hour has (check the collector).",
        )
    return f"{where_ko}: {breach}", f"{where_en}: {breach}"


def _rule(threshold: Decimal | None, value: Decimal | None) -> tuple[str, str]:
    """The threshold as said in a sentence; named only when it explains the breach.

    The ledger records the breach, judged at close by the registry of that close; a report
    drawn with another registry (whose threshold the value does not fall below) must not
    name a threshold that did not decide it.
    """
    if threshold is None or value is None or value >= threshold:
        return "마감 때 등록부의 기준", "the threshold of the registry it was closed with"
    return f"{threshold * 100:.0f}%", f"{threshold * 100:.0f}%"


# -- nodes with reporting gaps ----------------------------------------------------------------
def node_gaps(store: Store, period: str, limit: int = MAX_GAP_NODES) -> list[NodeGap]:
    """Nodes with hours of the month in which none of their devices reported, most missing first."""
    month = parse_month(period)
    seen = (
        store.scan("usage_hourly", USAGE_HOURLY)
        .filter(pl.col("period") == period)
        .select("node", "entity", "gpu_model", "hour_start")
        .unique()
        .collect()
    )
    if seen.height == 0:
        return []
    start = month.start_utc.replace(tzinfo=None)
    hours = month.hours
    owners: dict[str, tuple[str, str]] = {}
    present: dict[str, set[int]] = {}
    for node, entity, model, hour in seen.sort("node", "entity", "gpu_model").iter_rows():
        owners.setdefault(node, (entity, model))
        index = int((hour.replace(tzinfo=None) - start).total_seconds() // 3600)
        present.setdefault(node, set()).add(index)
    gaps = []
    for node, hours_seen in present.items():
        missing = hours - len({h for h in hours_seen if 0 <= h < hours})
        if missing <= 0:
            continue
        best_from, best_len, run_from, run_len = 0, 0, 0, 0
        for h in range(hours + 1):
            if h < hours and h not in hours_seen:
                if run_len == 0:
                    run_from = h
                run_len += 1
            elif run_len:
                if run_len > best_len:
                    best_from, best_len = run_from, run_len
                run_len = 0
        kst0 = start + _KST
        gaps.append(
            NodeGap(node, *owners[node], missing, kst0 + timedelta(hours=best_from),
                    kst0 + timedelta(hours=best_from + best_len))
        )
    gaps.sort(key=lambda g: (-g.missing_hours, g.node))
    return gaps[:limit]


# -- the seal -------------------------------------------------------------------------------
def seal_status(store: Store, period: str) -> SealStatus:
    """The period's manifest hash and the verdict of :func:`storage.manifest.verify` (re-hashes now)."""
    if period not in sealed_periods(store):
        return SealStatus(None, False, "봉인되지 않음: 마감(close)되지 않은 달입니다. / Not sealed: the month is not closed.")
    digest = hashlib.sha256(store.read_bytes(manifest_path(store, period))).hexdigest()
    result = verify(store)
    if result.ok:
        return SealStatus(
            digest,
            True,
            f"검증 이상 없음: 봉인된 파일 {result.files_checked:,}개를 다시 해시하고 {len(result.periods)}개월의 "
            f"체인을 확인했습니다. / Verified: {result.files_checked:,} sealed files re-hashed, "
            f"chain of {len(result.periods)} month(s) intact.",
        )
    shown = "; ".join(str(d) for d in result.differences[:3])
    return SealStatus(
        digest,
        False,
        f"검증 실패 / VERIFY FAILED: {len(result.differences)} difference(s): {shown}. Run gpuledger verify.",
    )


def render_report(
    store: Store,
    period: str,
    out_dir: Path | None = None,
    *,
    registry: Registry | None = None,
) -> ReportResult:
    """Draw the charts and the HTML page of ``period``; see the module docstring."""
    compliance = read_ledger(store, COMPLIANCE_DIR, period, COMPLIANCE)
    billing = read_ledger(store, BILLING_DIR, period, BILLING)
    if compliance.height == 0 and billing.height == 0:
        raise ReportError(f"no ledgers for {period}: close the month first (gpuledger close --month {period})")
    figures = entity_figures(compliance, billing, registry)
    projects = top_projects(billing)
    said = findings(compliance, registry)
    gaps = node_gaps(store, period)
    seal = seal_status(store, period)
    simulated = is_simulated(store)
    target = Path(out_dir) if out_dir is not None else Path(store.root) / "reports"
    pack = Store(target / period)

    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib import font_manager, pyplot

    _load_korean_font(font_manager)
    per_entity = [f for f in figures if f.entity != NATIONAL]
    thresholds = registry.thresholds if registry else None
    charts = {}
    with matplotlib.rc_context({"font.family": FONT_FAMILY, "axes.unicode_minus": False}):
        charts["usage-by-entity.png"] = _save(pyplot, _usage_chart(pyplot, period, per_entity))
        charts["utilisation-coverage.png"] = _save(pyplot, _ratio_chart(pyplot, period, per_entity, thresholds))
        charts["top-projects.png"] = _save(pyplot, _projects_chart(pyplot, period, projects))
    files = []
    for name, data in charts.items():
        pack.write_bytes_atomic(pack.path(name), data)
        files.append(name)
    page = _html(
        _Page(period, figures, projects, charts, said, gaps, seal, simulated, thresholds,
              {f.entity: f.display_name for f in figures})
    )
    page = page.replace("</head>", f"<style>{_font_faces(font_manager, _page_text(page))}</style>\n</head>", 1)
    pack.write_bytes_atomic(pack.path("report.html"), page.encode())
    files.append("report.html")
    return ReportResult(period, target / period, tuple(files), tuple(figures), tuple(said), tuple(gaps), seal, simulated)


# -- fonts and saving -----------------------------------------------------------------------
def _load_korean_font(font_manager: Any) -> None:
    spec = importlib.util.find_spec("koreanize_matplotlib")
    if spec is not None and spec.submodule_search_locations:
        fonts = Path(next(iter(spec.submodule_search_locations))) / "fonts"
        for ttf in sorted(fonts.glob("*.ttf")):
            font_manager.fontManager.addfont(str(ttf))
    if not any(f.name == FONT_FAMILY for f in font_manager.fontManager.ttflist):
        raise ReportError(
            f"font {FONT_FAMILY} not found: install koreanize-matplotlib (a gpuledger dependency) or fonts-nanum"
        )


def _page_text(page: str) -> str:
    """The characters the page shows (the embedded PNGs left out)."""
    return re.sub(r"data:image/png;base64,[^\"]+", "", page)


def _font_faces(font_manager: Any, text: str) -> str:
    """NanumGothic (regular and bold) cut down to ``text``'s glyphs, as CSS ``@font-face`` rules.

    The page then shows and prints Hangul on a machine without a Korean font, still with no
    network; the subset is a few tens of KB instead of 4.6 MB per weight. A weight whose file
    cannot be found or read is left out: the page falls back to the system's Korean fonts.
    """
    from fontTools import subset
    from fontTools.ttLib import TTFont

    faces = []
    logger = logging.getLogger("fontTools.subset")
    level = logger.level
    logger.setLevel(logging.ERROR)  # "TSI0 NOT subset; dropped": hinting sources, not needed
    try:
        for weight in ("normal", "bold"):
            try:
                path = font_manager.findfont(
                    font_manager.FontProperties(family=FONT_FAMILY, weight=weight), fallback_to_default=False
                )
                font = TTFont(path, recalcTimestamp=False, lazy=False)
            except (ValueError, OSError):
                continue
            options = subset.Options()
            subsetter = subset.Subsetter(options)
            subsetter.populate(text=text)
            subsetter.subset(font)
            font.flavor = "woff"
            buffer = io.BytesIO()
            font.save(buffer)
            data = base64.b64encode(buffer.getvalue()).decode()
            faces.append(
                f'@font-face {{ font-family: "GpuledgerNanum"; font-weight: {weight}; '
                f'src: url(data:font/woff;base64,{data}) format("woff"); }}'
            )
    finally:
        logger.setLevel(level)
    return "\n".join(faces)


def _save(pyplot: Any, figure: Any) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    pyplot.close(figure)
    missing = [str(w.message) for w in caught if "missing from font" in str(w.message)]
    if missing:
        raise ReportError(f"Korean text would not render: {missing[0]}")
    for w in caught:  # anything else stays a warning the caller sees
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return buffer.getvalue()


# -- charts ---------------------------------------------------------------------------------
def _usage_chart(pyplot: Any, period: str, rows: Sequence[EntityFigures]) -> Any:
    """Left: allocated capacity split into busy / idle / unreported. Right: the reported part
    alone (busy / idle), so usage stays readable when telemetry covers a sliver of capacity."""
    from matplotlib.ticker import FuncFormatter

    figure, (left, right) = pyplot.subplots(
        1, 2, figsize=(11, 0.6 * max(len(rows), 3) + 1.8), sharey=True, gridspec_kw={"width_ratios": [3, 2]}
    )
    names = [r.display_name or r.entity for r in rows]
    busy = [float(r.busy_gpu_hours) for r in rows]
    idle = [float(r.idle_gpu_hours) for r in rows]
    unreported = [float(r.unreported_gpu_hours) for r in rows]
    thousands = FuncFormatter(lambda value, _pos: f"{value:,.0f}")
    for axes in (left, right):
        axes.barh(names, busy, color=_COLOURS["busy"], label="가동 (busy)")
        axes.barh(names, idle, left=busy, color=_COLOURS["idle"], label="유휴 (idle)")
        axes.xaxis.set_major_formatter(thousands)
        axes.tick_params(axis="x", labelsize=8)
    left.barh(names, unreported, left=[b + i for b, i in zip(busy, idle, strict=True)],
              color=_COLOURS["unreported"], label="미보고 (unreported)")
    for y, row in enumerate(rows):
        cover = "–" if row.coverage is None else f"{row.coverage * 100:.1f}%"
        left.text(float(row.capacity_gpu_hours), y, f" 보고율 {cover}", va="center", fontsize=8)
        share = "–" if row.utilisation is None else f"{row.utilisation * 100:.0f}%"
        right.text(float(row.reported_gpu_hours), y, f" {row.reported_gpu_hours:,.0f} (활용률 {share})",
                   va="center", fontsize=8)
    left.invert_yaxis()
    left.set_xlabel("할당 용량 GPU·시간 (capacity GPU-hours)")
    right.set_xlabel("보고 GPU·시간 (reported GPU-hours)")
    left.set_title("할당 용량: 가동·유휴·미보고", fontsize=10)
    right.set_title("보고: 가동·유휴", fontsize=10)
    left.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncols=3, fontsize=8, frameon=False)
    left.margins(x=0.22)
    right.margins(x=0.45)
    figure.suptitle(f"{period} 기관별 GPU·시간")
    return figure


def _ratio_chart(pyplot: Any, period: str, rows: Sequence[EntityFigures], thresholds: Any) -> Any:
    figure, axes = pyplot.subplots(figsize=(10, 4.4))
    names = [(r.display_name or r.entity).replace(" ", "\n", 1) for r in rows]
    positions = range(len(rows))
    width = 0.38
    util = [float(r.utilisation or 0) * 100 for r in rows]
    cover = [float(r.coverage or 0) * 100 for r in rows]
    bars_util = axes.bar([p - width / 2 for p in positions], util, width, color="#2b6cb0", label="활용률 (가동 ÷ 보고)")
    bars_cover = axes.bar([p + width / 2 for p in positions], cover, width, color="#38a169", label="보고율 (보고 ÷ 할당 용량)")
    for bars, values in ((bars_util, util), (bars_cover, cover)):
        labels = [f"{v:.1f}%" if v >= 0.1 or v == 0 else "<0.1%" for v in values]
        axes.bar_label(bars, labels=labels, fontsize=7, padding=2)
    if thresholds is not None:
        axes.axhline(float(thresholds.under_use_below) * 100, color="#2b6cb0", linestyle="--", linewidth=1,
                     label=f"활용률 기준 {thresholds.under_use_below * 100:.0f}%")
        axes.axhline(float(thresholds.low_coverage_below) * 100, color="#38a169", linestyle=":", linewidth=1,
                     label=f"보고율 기준 {thresholds.low_coverage_below * 100:.0f}%")
    axes.set_xticks(list(positions), names, fontsize=8)
    axes.set_ylim(0, 125)
    axes.set_ylabel("%")
    axes.set_title(f"{period} 기관별 활용률과 보고율")
    axes.legend(fontsize=8, loc="upper center", ncols=4, frameon=False)
    return figure


def _projects_chart(pyplot: Any, period: str, projects: Sequence[tuple[str, str, Decimal, Decimal]]) -> Any:
    from matplotlib.ticker import FuncFormatter

    figure, axes = pyplot.subplots(figsize=(9, 0.45 * max(len(projects), 3) + 1.4))
    labels = [f"{project} ({entity})" for entity, project, _, _ in projects]
    hours = [float(h) for _, _, h, _ in projects]
    axes.barh(labels, hours, color="#805ad5")
    axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _pos: f"{value:,.0f}"))
    for y, (_, _, h, amount) in enumerate(projects):
        axes.text(float(h), y, f"  {h:,.1f} h · {amount:,.0f} 원", va="center", fontsize=8)
    axes.invert_yaxis()
    axes.set_xlabel("청구 GPU·시간 (billed GPU-hours)")
    axes.set_title(f"{period} 상위 프로젝트 (청구 GPU·시간)")
    axes.margins(x=0.3)
    return figure


# -- the page -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Page:
    period: str
    figures: Sequence[EntityFigures]
    projects: Sequence[tuple[str, str, Decimal, Decimal]]
    charts: dict[str, bytes]
    findings: Sequence[Finding]
    gaps: Sequence[NodeGap]
    seal: SealStatus
    simulated: bool
    thresholds: Thresholds | None
    names: dict[str, str]


_CSS = """
body { font-family: "GpuledgerNanum", "NanumGothic", "Noto Sans CJK KR", "Apple SD Gothic Neo", "Malgun Gothic", sans-serif;
       margin: 2em auto; max-width: 1150px; padding: 0 1em; color: #1a202c; line-height: 1.45; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 2px solid #2b6cb0; padding-bottom: 0.15em; margin-top: 1.6em; }
.sub { color: #4a5568; margin-top: 0; }
.banner { background: #fff5f5; border: 3px solid #c53030; color: #9b2c2c; padding: 0.6em 1em; font-weight: bold;
          font-size: 1.1em; margin-bottom: 1em; }
.seal { background: #f7fafc; border: 1px solid #cbd5e0; padding: 0.6em 1em; font-size: 0.92em; }
.seal code { font-size: 0.95em; word-break: break-all; }
.ok { color: #276749; font-weight: bold; } .bad { color: #c53030; font-weight: bold; }
.cards { display: flex; gap: 0.8em; flex-wrap: wrap; margin: 1em 0; }
.card { border: 1px solid #cbd5e0; border-radius: 6px; padding: 0.5em 0.9em; min-width: 10em; }
.card b { display: block; font-size: 1.4em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #cbd5e0; padding: 0.3em 0.5em; text-align: right; }
th { background: #edf2f7; }
th:first-child, td:first-child { text-align: left; }
td.text, th.text { text-align: left; }
tr.national { font-weight: bold; background: #edf2f7; }
dl.terms { display: grid; grid-template-columns: max-content 1fr; gap: 0.15em 1em; font-size: 0.9em; }
dl.terms dt { font-weight: bold; } dl.terms dd { margin: 0; }
ul.findings li { margin-bottom: 0.4em; } .en { color: #4a5568; font-size: 0.92em; }
figure { margin: 1em 0; } img { max-width: 100%; }
.note { color: #4a5568; font-size: 0.85em; }
@page { size: A4 landscape; margin: 12mm; }
.print-mark { display: none; }
@media print {
  body { margin: 0; max-width: none; font-size: 9pt; line-height: 1.3; }
  h1 { font-size: 16pt; } h2 { font-size: 12pt; margin-top: 0.8em; }
  .card { padding: 0.2em 0.6em; } .card b { font-size: 1.15em; } .cards { margin: 0.5em 0; }
  table { font-size: 8.5pt; margin: 0.4em 0; }
  .print-mark { display: block; position: fixed; bottom: 0; right: 0; color: #9b2c2c; font-weight: bold;
                font-size: 8pt; }
  .banner, tr.national, th, .seal { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
  h2 { break-after: avoid; } table, figure, .seal, .cards, dl.terms, ul.findings li { break-inside: avoid; }
  .charts { break-before: page; }
}
"""


def _html(page: _Page) -> str:
    esc = html.escape
    period = page.period
    figures = page.figures
    national = next((f for f in figures if f.entity == NATIONAL), None)
    start, end = kst_span(period)
    banner = (
        '<div class="banner" role="alert">모의 데이터 — SIMULATED DATA. 이 보고서는 <code>gpuledger demo</code>의 '
        "가상 장비 데이터로 작성되었습니다. 실제 사용량이나 청구가 아닙니다. / This report was drawn from a simulated "
        "fleet: it is not real usage and not an invoice.</div>"
        if page.simulated
        else ""
    )
    if page.simulated:  # repeated at the foot of every printed page
        banner += '<div class="print-mark">모의 데이터 — SIMULATED DATA · not real usage, not an invoice</div>'
    seal = page.seal
    verdict = f'<span class="{"ok" if seal.verified else "bad"}">{esc(seal.detail)}</span>'
    seal_box = (
        f'<div class="seal"><div>봉인 (manifest <code>manifests/{esc(period)}.json</code>) SHA-256: '
        f"<code>{esc(seal.manifest_sha256 or '–')}</code></div><div>{verdict}</div>"
        f'<div class="note">이 해시는 <code>sha256sum manifests/{esc(period)}.json</code>의 결과이며, 다음 달 봉인의 '
        "<code>previous.sha256</code>에 기록됩니다. 감사 절차: docs/auditors.md.</div></div>"
    )
    cards = ""
    if national is not None:
        cards = (
            '<div class="cards">'
            f"<div class=\"card\">보고율 (coverage)<b>{_pct(national.coverage)}</b></div>"
            f"<div class=\"card\">활용률 (utilisation)<b>{_pct(national.utilisation)}</b></div>"
            f"<div class=\"card\">청구 GPU·시간 (billed)<b>{national.billed_gpu_hours:,.1f}</b></div>"
            f"<div class=\"card\">청구액 합계 (amount)<b>₩{national.amount_krw:,.0f}</b></div>"
            f"<div class=\"card\">미귀속 (not billed)<b>{national.unattributed_gpu_hours:,.1f} h</b></div>"
            "</div>"
        )
    terms = "\n".join(f"<dt>{esc(ko)} <span class=\"en\">({esc(en)})</span></dt><dd>{esc(d)}</dd>" for _, ko, en, d in TERMS)
    if page.thresholds is not None:
        t = page.thresholds
        terms += (
            f"\n<dt>기준 <span class=\"en\">(thresholds)</span></dt><dd>활용률 {t.under_use_below * 100:.0f}% 미만은 "
            f"저활용(under use), 보고율 {t.low_coverage_below * 100:.0f}% 미만은 저보고(low coverage)로 표시합니다.</dd>"
        )
    if page.findings:
        said = "\n".join(
            f"<li>{esc(f.korean)}<br><span class=\"en\">{esc(f.english)}</span></li>" for f in page.findings
        )
        finding_block = f'<ul class="findings">\n{said}\n</ul>'
    else:
        finding_block = "<p>위반 사항 없음. / No breach this month.</p>"
    if page.gaps:
        gap_rows = "\n".join(
            f"<tr><td>{esc(g.node)}</td><td class=\"text\">{esc(page.names.get(g.entity, g.entity))}</td><td class=\"text\">{esc(g.gpu_model)}</td>"
            f"<td>{g.missing_hours:,}</td><td class=\"text\">{g.longest_from:%m-%d %H:%M} → {g.longest_to:%m-%d %H:%M} "
            f"({g.longest_hours:,} h)</td></tr>"
            for g in page.gaps
        )
        gap_block = (
            "<p>그 달에 보고했지만 일부 시간에 아무 장치도 보고하지 않은 노드입니다 (KST). 이 시간은 미보고로 "
            "집계되며 사용량으로 채워지지 않습니다. / Nodes that reported this month but were silent in some hours; "
            "those hours count as unreported, never as zero usage.</p>"
            '<table><tr><th>노드 (node)</th><th class="text">기관</th><th class="text">GPU 모델</th>'
            '<th>무보고 시간 (h)</th><th class="text">가장 긴 공백 (KST)</th></tr>\n'
            f"{gap_rows}\n</table>"
        )
    else:
        gap_block = "<p>모든 노드가 매 시간 보고했습니다. / Every node reported every hour.</p>"
    entity_rows = "\n".join(
        f"<tr{_NATIONAL_ROW if f.entity == NATIONAL else ''}><td>{esc(f.display_name or f.entity)}</td>"
        f"<td>{f.allocated_gpus:,}</td><td>{f.capacity_gpu_hours:,.1f}</td><td>{f.reported_gpu_hours:,.1f}</td>"
        f"<td>{_pct(f.coverage)}</td><td>{f.busy_gpu_hours:,.1f}</td><td>{f.idle_gpu_hours:,.1f}</td>"
        f"<td>{_pct(f.utilisation)}</td><td>{f.unreported_gpu_hours:,.1f}</td>"
        f"<td>{f.unattributed_gpu_hours:,.1f}</td><td>{f.billed_gpu_hours:,.1f}</td><td>{f.amount_krw:,.0f}</td></tr>"
        for f in figures
    )
    project_rows = "\n".join(
        f"<tr><td>{esc(p)}</td><td class=\"text\">{esc(page.names.get(e, e))}</td><td>{h:,.1f}</td><td>{a:,.0f}</td></tr>"
        for e, p, h, a in page.projects
    )
    images = "\n".join(
        f'<figure><img alt="{esc(name)}" src="data:image/png;base64,{base64.b64encode(data).decode()}"></figure>'
        for name, data in page.charts.items()
    )
    return f"""<!DOCTYPE html>
<html lang="ko">
<head>
<meta charset="utf-8">
<title>{TITLE} — {esc(period)}</title>
<style>{_CSS}</style>
</head>
<body>
{banner}
<h1>{TITLE} — {esc(period)}</h1>
<p class="sub">GPU usage report · KST {start:%Y-%m-%d %H:%M} – {end:%Y-%m-%d %H:%M} · 월 마감 원장(청구·준수)에서 작성 ·
단위: GPU·시간, 금액은 원(KRW)</p>
{seal_box}
{cards}
<h2>위반 사항 (findings)</h2>
{finding_block}
<h2>기관별 현황 (by entity)</h2>
<table>
<tr><th>기관</th><th>할당 GPU</th><th>할당 용량</th><th>보고</th><th>보고율</th><th>가동</th><th>유휴</th><th>활용률</th>
<th>미보고</th><th>미귀속 (청구 제외)</th><th>청구 GPU·시간</th><th>청구액 (원)</th></tr>
{entity_rows}
</table>
<p class="note">보고 = 가동 + 유휴 = 귀속 + 미귀속. 미귀속 GPU·시간은 작업을 찾지 못한 사용으로 집계하지만 청구하지 않습니다.
청구 GPU·시간 = 귀속 사용분 + 이전 달 정정분. / reported = busy + idle = attributed + unattributed; unattributed hours
are counted, never billed; billed = attributed usage + corrections of earlier months.</p>
<h2>보고 공백 노드 (nodes with reporting gaps)</h2>
{gap_block}
<h2>용어 (definitions)</h2>
<dl class="terms">
{terms}
</dl>
<h2>상위 프로젝트 (top projects)</h2>
<table>
<tr><th>프로젝트</th><th class="text">기관</th><th>청구 GPU·시간</th><th>청구액 (원)</th></tr>
{project_rows}
</table>
<div class="charts">
<h2>차트 (charts)</h2>
{images}
</div>
</body>
</html>
"""


_NATIONAL_ROW = ' class="national"'
