"""The monthly report a person reads (``gpuledger report --month YYYY-MM``).

From a closed month's compliance and billing ledgers it draws three PNG charts and one
self-contained HTML page (charts embedded as base64, tables inline, no network) under
``<out>/<YYYY-MM>/`` (default ``<out>`` = ``<data-dir>/reports``)::

    usage-by-entity.png        capacity split into busy / idle / unreported GPU-hours per entity
    utilisation-coverage.png   utilisation (busy / reported) and coverage (reported / capacity)
                               per entity, with the registry's thresholds when known
    top-projects.png           the ten projects with the most billed GPU-hours
    report.html                "GPU 사용 보고서": the charts, per-entity and national tables, breaches

Korean text must render: matplotlib draws missing glyphs as empty boxes and only *warns*
("Glyph … missing from font(s)"), so every figure is saved under a warnings recorder and any
missing-glyph warning is an error (:class:`ReportError`). The NanumGothic font comes from the
``koreanize-matplotlib`` package (located, not imported: its import needs ``distutils`` and
rewrites global ``rcParams``) or from a system install (Debian ``fonts-nanum``). Matplotlib
is imported inside :func:`render_report` with the Agg backend; nothing happens at import time.
"""

from __future__ import annotations

import base64
import html
import importlib.util
import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl

from accounting.errors import AccountingError
from accounting.export import BILLING_DIR, COMPLIANCE_DIR, read_ledger
from accounting.registry import NATIONAL, Registry
from accounting.schemas import BILLING, COMPLIANCE
from storage.dataset import Store

FONT_FAMILY = "NanumGothic"
TITLE = "GPU 사용 보고서"
TOP_PROJECTS = 10
_COLOURS = {"busy": "#2b6cb0", "idle": "#f6ad55", "unreported": "#cbd5e0"}


class ReportError(AccountingError):
    """The report cannot be drawn (no ledgers for the month, or Korean text would not render)."""


@dataclass(frozen=True, slots=True)
class EntityFigures:
    entity: str
    allocated_gpus: int
    capacity_gpu_hours: Decimal
    reported_gpu_hours: Decimal
    busy_gpu_hours: Decimal
    idle_gpu_hours: Decimal
    unreported_gpu_hours: Decimal
    utilisation: Decimal | None
    coverage: Decimal | None
    breaches: tuple[str, ...]
    amount_krw: Decimal


@dataclass(frozen=True, slots=True)
class ReportResult:
    period: str
    out_dir: Path
    files: tuple[str, ...]
    entities: tuple[EntityFigures, ...]


def entity_figures(compliance: pl.DataFrame, billing: pl.DataFrame) -> list[EntityFigures]:
    """Per-entity figures summed over GPU models (exact decimals); the national row last."""
    amounts: dict[str, Decimal] = {}
    for entity, amount in billing.select("entity", "amount_krw").iter_rows():
        amounts[entity] = amounts.get(entity, Decimal(0)) + amount
    amounts[NATIONAL] = sum(amounts.values(), Decimal(0))
    sums: dict[str, dict[str, Any]] = {}
    for row in compliance.iter_rows(named=True):
        acc = sums.setdefault(row["entity"], _empty())
        acc["gpus"] += row["allocated_gpus"] or 0
        acc["cap"] += row["capacity_gpu_hours"] or 0
        acc["rep"] += row["reported_gpu_hours"] or 0
        acc["busy"] += row["busy_gpu_hours"] or 0
        acc["idle"] += row["idle_gpu_hours"] or 0
        acc["unrep"] += row["unreported_gpu_hours"] or 0
        acc["breaches"].update(row["breaches"] or [])
    for entity in amounts:  # billed but absent from compliance: still on the report
        if entity != NATIONAL:
            sums.setdefault(entity, _empty())
    if NATIONAL not in sums:  # a ledger without the national roll-up: sum the entities
        national = _empty()
        for acc in sums.values():
            for key in ("gpus", "cap", "rep", "busy", "idle", "unrep"):
                national[key] += acc[key]
            national["breaches"].update(acc["breaches"])
        sums[NATIONAL] = national
    out = []
    for entity in sorted(sums, key=lambda e: (e == NATIONAL, e)):
        acc = sums[entity]
        out.append(
            EntityFigures(
                entity=entity,
                allocated_gpus=acc["gpus"],
                capacity_gpu_hours=acc["cap"],
                reported_gpu_hours=acc["rep"],
                busy_gpu_hours=acc["busy"],
                idle_gpu_hours=acc["idle"],
                unreported_gpu_hours=acc["unrep"],
                utilisation=_ratio(acc["busy"], acc["rep"]),
                coverage=_ratio(acc["rep"], acc["cap"]),
                breaches=tuple(sorted(acc["breaches"])),
                amount_krw=amounts.get(entity, Decimal(0)),
            )
        )
    return out


def top_projects(billing: pl.DataFrame, limit: int = TOP_PROJECTS) -> list[tuple[str, str, Decimal, Decimal]]:
    """(entity, project, GPU-hours, KRW) of the projects billed most GPU-hours (ties by name)."""
    acc: dict[tuple[str, str], list[Decimal]] = {}
    for entity, project, hours, amount in billing.select("entity", "project", "gpu_hours", "amount_krw").iter_rows():
        pair = acc.setdefault((entity, project), [Decimal(0), Decimal(0)])
        pair[0] += hours
        pair[1] += amount
    ranked = sorted(acc.items(), key=lambda item: (-item[1][0], item[0]))
    return [(e, p, h, a) for (e, p), (h, a) in ranked[:limit]]


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
    figures = entity_figures(compliance, billing)
    projects = top_projects(billing)
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
    page = _html(period, figures, projects, charts)
    pack.write_bytes_atomic(pack.path("report.html"), page.encode())
    files.append("report.html")
    return ReportResult(period, target / period, tuple(files), tuple(figures))


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
    names = [r.entity for r in rows]
    busy = [float(r.busy_gpu_hours) for r in rows]
    idle = [float(r.idle_gpu_hours) for r in rows]
    unreported = [float(r.unreported_gpu_hours) for r in rows]
    thousands = FuncFormatter(lambda value, _pos: f"{value:,.0f}")
    for axes in (left, right):
        axes.barh(names, busy, color=_COLOURS["busy"], label="사용 (busy)")
        axes.barh(names, idle, left=busy, color=_COLOURS["idle"], label="유휴 (idle)")
        axes.xaxis.set_major_formatter(thousands)
        axes.tick_params(axis="x", labelsize=8)
    left.barh(names, unreported, left=[b + i for b, i in zip(busy, idle, strict=True)],
              color=_COLOURS["unreported"], label="미보고 (unreported)")
    for y, row in enumerate(rows):
        left.text(float(row.capacity_gpu_hours), y, f" 할당 {row.capacity_gpu_hours:,.0f}", va="center", fontsize=8)
        share = "–" if row.utilisation is None else f"{row.utilisation * 100:.0f}%"
        right.text(float(row.reported_gpu_hours), y, f" {row.reported_gpu_hours:,.0f} (사용 {share})",
                   va="center", fontsize=8)
    left.invert_yaxis()
    left.set_xlabel("할당 용량 GPU·시간 (capacity GPU-hours)")
    right.set_xlabel("보고된 GPU·시간 (reported GPU-hours)")
    left.set_title("할당 대비 사용·유휴·미보고", fontsize=10)
    right.set_title("보고된 사용량: 사용·유휴", fontsize=10)
    left.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncols=3, fontsize=8, frameon=False)
    left.margins(x=0.25)
    right.margins(x=0.35)
    figure.suptitle(f"{period} 기관별 GPU 사용 현황")
    return figure


def _ratio_chart(pyplot: Any, period: str, rows: Sequence[EntityFigures], thresholds: Any) -> Any:
    figure, axes = pyplot.subplots(figsize=(9, 4.2))
    names = [r.entity for r in rows]
    positions = range(len(rows))
    width = 0.38
    util = [float(r.utilisation or 0) * 100 for r in rows]
    cover = [float(r.coverage or 0) * 100 for r in rows]
    bars_util = axes.bar([p - width / 2 for p in positions], util, width, color="#2b6cb0", label="활용률 (utilisation)")
    bars_cover = axes.bar([p + width / 2 for p in positions], cover, width, color="#38a169", label="보고율 (coverage)")
    for bars, values in ((bars_util, util), (bars_cover, cover)):
        labels = [f"{v:.1f}%" if v >= 0.1 or v == 0 else "<0.1%" for v in values]
        axes.bar_label(bars, labels=labels, fontsize=7, padding=2)
    if thresholds is not None:
        axes.axhline(float(thresholds.under_use_below) * 100, color="#2b6cb0", linestyle="--", linewidth=1,
                     label="활용률 기준")
        axes.axhline(float(thresholds.low_coverage_below) * 100, color="#38a169", linestyle=":", linewidth=1,
                     label="보고율 기준")
    axes.set_xticks(list(positions), names)
    axes.set_ylim(0, 112)
    axes.set_ylabel("%")
    axes.set_title(f"{period} 기관별 활용률과 보고율")
    axes.legend(fontsize=8, loc="upper right", ncols=2)
    return figure


def _projects_chart(pyplot: Any, period: str, projects: Sequence[tuple[str, str, Decimal, Decimal]]) -> Any:
    figure, axes = pyplot.subplots(figsize=(9, 0.45 * max(len(projects), 3) + 1.4))
    labels = [f"{project} ({entity})" for entity, project, _, _ in projects]
    hours = [float(h) for _, _, h, _ in projects]
    axes.barh(labels, hours, color="#805ad5")
    for y, (_, _, h, amount) in enumerate(projects):
        axes.text(float(h), y, f"  {h:,.1f} h · {amount:,.0f} 원", va="center", fontsize=8)
    axes.invert_yaxis()
    axes.set_xlabel("청구 GPU·시간 (billed GPU-hours)")
    axes.set_title(f"{period} 상위 프로젝트")
    axes.margins(x=0.3)
    return figure


# -- the page -------------------------------------------------------------------------------
def _html(period: str, figures: Sequence[EntityFigures], projects: Sequence[tuple[str, str, Decimal, Decimal]],
          charts: dict[str, bytes]) -> str:
    esc = html.escape

    def pct(value: Decimal | None) -> str:
        return "–" if value is None else f"{value * 100:.1f}%"

    national = ' class="national"'
    entity_rows = "\n".join(
        f"<tr{national if f.entity == NATIONAL else ''}><td>{esc('전국 (ALL)' if f.entity == NATIONAL else f.entity)}</td>"
        f"<td>{f.allocated_gpus:,}</td><td>{f.capacity_gpu_hours:,.1f}</td><td>{f.reported_gpu_hours:,.1f}</td>"
        f"<td>{f.busy_gpu_hours:,.1f}</td><td>{f.idle_gpu_hours:,.1f}</td><td>{f.unreported_gpu_hours:,.1f}</td>"
        f"<td>{pct(f.utilisation)}</td><td>{pct(f.coverage)}</td><td>{f.amount_krw:,.0f}</td>"
        f"<td>{esc(', '.join(f.breaches)) or '–'}</td></tr>"
        for f in figures
    )
    project_rows = "\n".join(
        f"<tr><td>{esc(p)}</td><td>{esc(e)}</td><td>{h:,.1f}</td><td>{a:,.0f}</td></tr>" for e, p, h, a in projects
    )
    images = "\n".join(
        f'<figure><img alt="{esc(name)}" src="data:image/png;base64,{base64.b64encode(data).decode()}"></figure>'
        for name, data in charts.items()
    )
    return f"""<!DOCTYPE html>
<html lang="ko">
<head>
<meta charset="utf-8">
<title>{TITLE} — {esc(period)}</title>
<style>
body {{ font-family: "NanumGothic", "Apple SD Gothic Neo", "Malgun Gothic", sans-serif; margin: 2em; color: #1a202c; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ border: 1px solid #cbd5e0; padding: 0.3em 0.6em; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
tr.national {{ font-weight: bold; background: #edf2f7; }}
img {{ max-width: 100%; }}
</style>
</head>
<body>
<h1>{TITLE} — {esc(period)}</h1>
<p>KST 기준 {esc(period)} 월 마감 원장(청구·준수)에서 작성. GPU·시간 단위, 금액은 원(KRW).</p>
<h2>기관별 현황</h2>
<table>
<tr><th>기관</th><th>할당 GPU</th><th>할당 용량</th><th>보고</th><th>사용</th><th>유휴</th><th>미보고</th><th>활용률</th><th>보고율</th><th>청구액 (원)</th><th>위반</th></tr>
{entity_rows}
</table>
<h2>상위 프로젝트</h2>
<table>
<tr><th>프로젝트</th><th>기관</th><th>GPU·시간</th><th>청구액 (원)</th></tr>
{project_rows}
</table>
<h2>차트</h2>
{images}
</body>
</html>
"""


def _empty() -> dict[str, Any]:
    return {"gpus": 0, "cap": Decimal(0), "rep": Decimal(0), "busy": Decimal(0), "idle": Decimal(0),
            "unrep": Decimal(0), "breaches": set()}


def _ratio(numerator: Decimal, denominator: Decimal) -> Decimal | None:
    if not denominator:
        return None
    return (numerator / denominator).quantize(Decimal("0.000001"))
