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
from accounting.figures import EntityFigures, display_name, entity_figures, is_simulated
from accounting.figures import pct as _pct
from accounting.report_page import Page, render_html
from accounting.registry import NATIONAL, Registry, Thresholds
from accounting.schemas import BILLING, COMPLIANCE
from accounting.usage import parse_month
from storage.dataset import Store
from storage.manifest import manifest_path, sealed_periods, verify
from storage.schemas import USAGE_HOURLY

FONT_FAMILY = "NanumGothic"
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
    registry_explicit: bool = False,
) -> ReportResult:
    """Draw the charts and the HTML page of ``period``; see the module docstring.

    A sealed month is drawn with the registry it was sealed with (thresholds, names): an
    explicitly given ``registry`` that differs is refused (:func:`accounting.sealed.registry_for`).
    """
    from accounting.sealed import registry_for

    registry = registry_for(store, period, registry, explicit=registry_explicit)
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
    page = render_html(
        Page(period, figures, projects, charts, said, gaps, seal, simulated, thresholds,
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
