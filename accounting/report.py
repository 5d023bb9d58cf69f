"""The monthly report a person reads (``gpuledger report --month YYYY-MM``).

From a closed month's compliance and billing ledgers it draws four PNG charts and one
self-contained HTML page (charts embedded as base64, tables inline, no network, printable on
A4) under ``<out>/<YYYY-MM>/`` (default ``<out>`` = ``<data-dir>/reports``)::

    usage-by-entity.png        capacity split into busy / idle / unreported GPU-hours per entity
    utilisation-coverage.png   utilisation (busy / reported) and coverage (reported / capacity)
                               per entity, with the registry's thresholds when known
    coverage-by-model.png      coverage per entity × GPU model, breaches in red (a model's breach
                               stays visible where its entity's total hides it)
    top-projects.png           the ten projects with the most billed GPU-hours
    report.html                "GPU 사용 보고서": a "simulated data" banner when it is, the seal
                               (manifest SHA-256 and verify status), the definitions, breaches
                               as sentences, per-model rows, nodes with reporting gaps, the charts

The page speaks the one vocabulary of every gpuledger output (:data:`TERMS`): capacity,
reported = busy + idle = attributed + unattributed (never billed), unreported, billed
GPU-hours and amount. Entities appear by the registry's ``display_name``; breaches as
sentences (:func:`accounting.breaches.breaches`), never as bare codes. Charts of simulated
data carry a watermark and a PNG ``Description`` saying so. Figures are shown at the one
precision of :mod:`accounting.figures` (GPU-hours to 2 places, whole won).

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
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl

from accounting.errors import AccountingError
from accounting.export import BILLING_DIR, COMPLIANCE_DIR, read_ledger
from accounting.figures import EntityFigures, display_name, entity_figures, hours_text, is_simulated, shown_billed_hours, won_text
from accounting.figures import pct
from accounting.breaches import Breach, breaches
from accounting.report_page import ChargeRow, ModelRow, NodeGap, Page, SealStatus, render_html
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
SIMULATED_DESCRIPTION = "SIMULATED DATA (gpuledger demo): not real usage, not an invoice"

class ReportError(AccountingError):
    """The report cannot be drawn (no ledgers for the month, or Korean text would not render)."""


@dataclass(frozen=True, slots=True)
class ReportResult:
    period: str
    out_dir: Path
    files: tuple[str, ...]
    entities: tuple[EntityFigures, ...]
    breaches: tuple[Breach, ...] = ()
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
    return [(e, p, shown_billed_hours(us), a) for (e, p), (us, a) in ranked[:limit]]


def correction_rows(billing: pl.DataFrame, registry: Registry | None = None) -> list[ChargeRow]:
    """The month's correction lines (usage of closed months that arrived after their close)."""
    rows = billing.filter(pl.col("charge_class") == "correction").sort(
        "entity", "corrects_period", "project", "gpu_model", "rate_from"
    )
    return [
        ChargeRow(display_name(registry, r["entity"]), r["project"], r["gpu_model"], r["corrects_period"],
                  r["rate_from"], r["rate_to"], r["list_rate_krw_per_gpu_hour"], r["rate_krw_per_gpu_hour"],
                  shown_billed_hours(int(r["gpu_microseconds"])), r["amount_krw"])
        for r in rows.iter_rows(named=True)
    ]


def rate_change_rows(billing: pl.DataFrame, registry: Registry | None = None) -> list[ChargeRow]:
    """Per entity × model whose usage lines fall in more than one rate segment of the month:
    one row per segment (its KST days and list rate), GPU-hours and KRW summed over projects."""
    usage = billing.filter(pl.col("charge_class") == "usage")
    changed = (
        usage.group_by("entity", "gpu_model").agg(pl.col("rate_from").n_unique().alias("segments"))
        .filter(pl.col("segments") > 1).select("entity", "gpu_model")
    )
    segments = (
        usage.join(changed, on=["entity", "gpu_model"])
        .group_by("entity", "gpu_model", "rate_from", "rate_to", "list_rate_krw_per_gpu_hour")
        .agg(pl.col("gpu_microseconds").sum(), pl.col("amount_krw").sum(), pl.col("rate_krw_per_gpu_hour").unique())
        .sort("entity", "gpu_model", "rate_from")
    )
    return [
        ChargeRow(display_name(registry, r["entity"]), "", r["gpu_model"], None, r["rate_from"], r["rate_to"],
                  r["list_rate_krw_per_gpu_hour"],
                  r["rate_krw_per_gpu_hour"][0] if len(r["rate_krw_per_gpu_hour"]) == 1 else None,
                  shown_billed_hours(int(r["gpu_microseconds"])), r["amount_krw"])
        for r in segments.iter_rows(named=True)
    ]


def model_rows(compliance: pl.DataFrame, registry: Registry | None = None) -> list[ModelRow]:
    """Every entity × GPU model of the compliance ledger (the national roll-up left out)."""
    rows = compliance.filter(pl.col("entity") != NATIONAL).sort("entity", "gpu_model")
    return [
        ModelRow(display_name(registry, r["entity"]), r["gpu_model"], r["allocated_gpus"] or 0, r["coverage"],
                 r["utilisation"], tuple(r["breaches"] or ()))
        for r in rows.iter_rows(named=True)
    ]


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
    said = breaches(compliance, registry)
    from accounting.breaches import Breach
    from accounting.losses import loss_sentences, month_losses  # recorded losses, with their figures

    said += [Breach(NATIONAL, "", "data_lost", ko, en) for ko, en in loss_sentences(month_losses(store, period))]
    gaps = node_gaps(store, period)
    seal = seal_status(store, period)
    simulated = is_simulated(store)
    target = Path(out_dir) if out_dir is not None else Path(store.root) / "reports"
    pack = Store(target / period)

    charts = _draw_charts(period, figures, model_rows(compliance, registry), projects,
                          registry.thresholds if registry else None, simulated)
    files = []
    for name, data in charts.items():
        pack.write_bytes_atomic(pack.path(name), data)
        files.append(name)
    page = render_html(
        Page(period, figures, projects, charts, said, gaps, seal, simulated, registry.thresholds if registry else None,
             {f.entity: f.display_name for f in figures}, model_rows(compliance, registry),
             correction_rows(billing, registry), rate_change_rows(billing, registry))
    )
    from matplotlib import font_manager

    page = page.replace("</head>", f"<style>{_font_faces(font_manager, _page_text(page))}</style>\n</head>", 1)
    pack.write_bytes_atomic(pack.path("report.html"), page.encode())
    files.append("report.html")
    return ReportResult(period, target / period, tuple(files), tuple(figures), tuple(said), tuple(gaps), seal, simulated)


def _draw_charts(
    period: str,
    figures: Sequence[EntityFigures],
    models: Sequence[ModelRow],
    projects: Sequence[tuple[str, str, Decimal, Decimal]],
    thresholds: Thresholds | None,
    simulated: bool,
) -> dict[str, bytes]:
    """The report's PNGs, Korean in NanumGothic; each marked when the data is simulated."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib import font_manager, pyplot

    _load_korean_font(font_manager)
    per_entity = [f for f in figures if f.entity != NATIONAL]
    drawn = {
        "usage-by-entity.png": lambda: _usage_chart(pyplot, period, per_entity),
        "utilisation-coverage.png": lambda: _ratio_chart(pyplot, period, per_entity, thresholds),
        "coverage-by-model.png": lambda: _model_chart(pyplot, period, models, thresholds),
        "top-projects.png": lambda: _projects_chart(pyplot, period, projects),
    }
    charts = {}
    with matplotlib.rc_context({"font.family": FONT_FAMILY, "axes.unicode_minus": False}):
        for name, draw in drawn.items():
            figure = draw()
            if simulated:
                _mark_simulated(figure)
            charts[name] = _save(pyplot, figure, simulated)
    return charts


def _mark_simulated(figure: Any) -> None:
    """A diagonal watermark across the chart: a PNG copied out of the report still says it."""
    figure.text(0.5, 0.5, "모의 데이터 · SIMULATED", fontsize=34, color="#c53030", alpha=0.18, rotation=20,
                ha="center", va="center", transform=figure.transFigure, zorder=100)


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


def _save(pyplot: Any, figure: Any, simulated: bool = False) -> bytes:
    buffer = io.BytesIO()
    metadata = {"Software": None, "Description": SIMULATED_DESCRIPTION if simulated else None}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight", metadata=metadata)
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
        axes.text(float(h), y, f"  {hours_text(h)} h · {won_text(amount)} 원", va="center", fontsize=8)
    axes.invert_yaxis()
    axes.set_xlabel("청구 GPU·시간 (billed GPU-hours)")
    axes.set_title(f"{period} 상위 프로젝트 (청구 GPU·시간)")
    axes.margins(x=0.3)
    return figure


def _model_chart(pyplot: Any, period: str, models: Sequence[ModelRow], thresholds: Thresholds | None) -> Any:
    """Coverage per entity × GPU model: a model below the threshold shows even when its entity's
    total (weighted by the other models) is above it. A breached row is red and says why."""
    figure, axes = pyplot.subplots(figsize=(10, 0.38 * max(len(models), 3) + 1.6))
    labels = [f"{m.name} · {m.gpu_model.removeprefix('NVIDIA ')}" for m in models]
    cover = [float(m.coverage or 0) * 100 for m in models]
    colours = ["#c53030" if "low_coverage" in m.breaches else "#38a169" for m in models]
    bars = axes.barh(labels, cover, color=colours)
    texts = [("–" if m.coverage is None else pct(m.coverage)) + (" 위반 (breach)" if "low_coverage" in m.breaches else "")
             for m in models]
    axes.bar_label(bars, labels=texts, fontsize=7, padding=2)
    if thresholds is not None:
        axes.axvline(float(thresholds.low_coverage_below) * 100, color="#c53030", linestyle=":", linewidth=1,
                     label=f"보고율 기준 {thresholds.low_coverage_below * 100:.0f}%")
        axes.legend(fontsize=8, loc="lower right")
    axes.invert_yaxis()
    axes.tick_params(axis="y", labelsize=7)
    # the axis starts near the lowest bar or rule, so 97.8 % beside 100 % is visibly shorter
    floor = min([*cover, float(thresholds.low_coverage_below) * 100 if thresholds else 100.0])
    start = max(0.0, 5 * ((floor - 3) // 5))
    axes.set_xlim(start, 100 + (100 - start) * 0.22)
    axes.set_xlabel(f"보고율 % (보고 ÷ 할당 용량, coverage){'' if start == 0 else f' · 축은 {start:.0f}%부터 (axis from {start:.0f}%)'}")
    axes.set_title(f"{period} GPU 모델별 보고율 (coverage per GPU model)")
    return figure
