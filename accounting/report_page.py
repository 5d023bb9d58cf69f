"""The HTML page of the monthly report (see :mod:`accounting.report`): one self-contained file.

No network: charts are embedded PNGs, the Korean font an embedded subset (added by the
caller), styles inline. Printable on A4 landscape: the print styles keep tables and figures
whole, start the charts on a new page, and repeat a "simulated data" mark on every page when
the data is simulated. Every figure comes from :mod:`accounting.figures` in its one vocabulary.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING

from accounting.figures import TERMS, EntityFigures, kst_span
from accounting.figures import pct as _pct
from accounting.registry import NATIONAL, Thresholds

if TYPE_CHECKING:
    from accounting.report import Finding, NodeGap, SealStatus

TITLE = "GPU 사용 보고서"


@dataclass(frozen=True, slots=True)
class Page:
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


def render_html(page: Page) -> str:
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
