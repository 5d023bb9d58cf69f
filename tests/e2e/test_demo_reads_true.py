"""What a person reads after ``gpuledger demo``: the summary, the statements, the report.

One demo month (October 2026, the default: 31 days, 744 hours) of the default fleet (the
programme scaled down: 33 nodes × 8 GPUs, gpuledger/demo.py FLEET), after the last day of
September that the fleet also runs and the demo closes first, against the default demo
programme registry; then each human-facing output is read the way its reader would — the
printed tables, the XLSX cells and formulas (openpyxl), the statement CSV, the HTML — and
checked against the registry file (read with tomllib), the raw events (DuckDB) and the
sealed manifest. The month's events are re-derived here, never with gpuledger's billing: a
correction of September (gov-n03's events of 30 September 12:00-24:00 KST, drained after
September's close), Naver's GB200 rate change on 16 October, and naver-n00's first GPU,
whole until 11 October 00:00 KST and MIG instances after.
"""

from __future__ import annotations

import csv
import hashlib
import html
import json
import re
import tomllib
from collections import defaultdict
from datetime import date, timedelta
from fractions import Fraction
from decimal import ROUND_DOWN, ROUND_HALF_EVEN, Decimal
from pathlib import Path

import duckdb
import openpyxl
import pytest
from deltalake import DeltaTable

from accounting.registry import load_registry
from tests.unit.xlsx_formulas import evaluate, find_row, formula_right_of

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
DEMO_REGISTRY = REPO / "examples" / "registry-demo.toml"
PERIOD = "2026-10"
PREVIOUS = "2026-09"
HOURS = 744
US_PER_HOUR = 3_600_000_000
ENTITIES = ("gov", "hyundai", "naver", "samsung", "skt")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory):
    from tests.e2e.conftest import run_cli

    data = tmp_path_factory.mktemp("demo") / "data"
    result = run_cli("demo", "--data-dir", str(data))  # the default month is PERIOD
    manifest_bytes = (data / "manifests" / f"{PERIOD}.json").read_bytes()
    return {
        "data": data,
        "stdout": result.stdout,
        "stderr": result.stderr,
        "sha": hashlib.sha256(manifest_bytes).hexdigest(),
        "content": json.loads(manifest_bytes)["content_sha256"],  # statement numbers derive from it
        "totals": json.loads(manifest_bytes)["totals"],
        "finance": data / "exports" / PERIOD / "finance",
        "page": (data / "reports" / PERIOD / "report.html").read_text(encoding="utf-8"),
    }


def _rows(stdout: str, header_start: str) -> dict[str, list[str]]:
    """The printed table under the header line starting with ``header_start``: entity → cells."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:2] == header_start.split())
    rows = {}
    for line in lines[start + 2 :]:
        cells = line.split()
        if not cells:
            continue
        if cells[0] not in (*ENTITIES, "total"):
            break
        rows[cells[0]] = cells[1:]
    return rows


def _billed_us(demo, entity: str | None) -> int:
    where = f"where entity = '{entity}'" if entity else ""
    return duckdb.sql(
        f"select sum(gpu_microseconds)::BIGINT from read_parquet('{demo['data']}/ledgers/billing/period={PERIOD}/*.parquet') {where}"
    ).fetchall()[0][0]


def _shown(us: int) -> str:
    return str((Decimal(us) / Decimal(3_600_000_000)).quantize(Decimal("0.01"), rounding=ROUND_HALF_EVEN))


def _n(text: str) -> Decimal:
    return Decimal(text.replace(",", "").rstrip("%"))


def _raw(demo) -> str:
    """``raw/`` for DuckDB: the Parquet files its Delta log lists (files a compaction replaced are not read)."""
    return f"read_parquet({DeltaTable(str(demo['data'] / 'raw')).file_uris()!r}, hive_partitioning = false)"


def _registry_doc() -> dict:
    with DEMO_REGISTRY.open("rb") as f:
        return tomllib.load(f, parse_float=Decimal)


def _h(value: Decimal) -> str:
    """GPU-hours as the summary prints them (2 places, thousands separated)."""
    return f"{value:,.2f}"


def _pct(numerator: Decimal, denominator: Decimal) -> str:
    return f"{numerator / denominator * 100:.1f}%"


def _month_figures(demo) -> dict[tuple[str, str], dict[str, Decimal]]:
    """Per (entity, GPU model), derived without gpuledger: capacity from the registry file's
    allocations day by day; reported and busy GPU-hours from ``raw/`` events of the month, each
    physical GPU's hour capped at one hour (its busy time scaled with it)."""
    days = [date(2026, 10, 1) + timedelta(days=d) for d in range(HOURS // 24)]
    figures: dict[tuple[str, str], dict[str, Decimal]] = defaultdict(
        lambda: {"gpus": Decimal(0), "cap": Decimal(0), "rep": Decimal(0), "busy": Decimal(0)}
    )
    for entity, spec in _registry_doc()["entities"].items():
        for a in spec.get("allocations", []):
            active = sum(a["effective_from"] <= d <= a.get("effective_to", date.max) for d in days)
            figures[(entity, a["gpu_model"])]["cap"] += a["count"] * 24 * active
            figures[(entity, a["gpu_model"])]["gpus"] += a["count"] if active else 0
    hour_us = 3_600_000_000
    rows = duckdb.sql(
        f"""with per_gpu_hour as (
              select entity, gpu_model, sum(gpu_microseconds) as us, sum(busy_gpu_microseconds) as busy
              from {_raw(demo)} where period = '{PERIOD}'
              group by entity, gpu_model, gpu_uuid, date_trunc('hour', interval_start))
            select entity, gpu_model, sum(least(us, {hour_us}))::HUGEINT::VARCHAR,
                   coalesce(sum(busy) filter (where us <= {hour_us}), 0)::HUGEINT::VARCHAR,
                   coalesce(sum(busy * {hour_us}.0 / us) filter (where us > {hour_us}), 0)::VARCHAR
            from per_gpu_hour group by entity, gpu_model"""
    ).fetchall()
    for entity, model, rep_us, busy_us, busy_capped_us in rows:
        figures[(entity, model)]["rep"] = Decimal(rep_us) / hour_us
        figures[(entity, model)]["busy"] = (Decimal(busy_us) + Decimal(busy_capped_us)) / hour_us
    return dict(figures)


def test_the_summary_reads_like_a_real_month_of_its_registry(demo) -> None:
    doc = _registry_doc()
    usage = _rows(demo["stdout"], "entity   capacity")
    # the fleet follows the programme's proportions: new Blackwell GPUs Naver 6 : the others 5
    blackwell = {
        e: sum(a["count"] for a in doc["entities"][e]["allocations"] if a["gpu_model"] != "NVIDIA H100 80GB HBM3")
        for e in ENTITIES
    }
    assert all(5 * blackwell["naver"] == 6 * blackwell[e] for e in ENTITIES if e != "naver"), blackwell
    # every printed figure is the registry file's capacity and raw/'s events, derived here
    # without gpuledger (the demo is deterministic: to the printed 0.01 h and 0.1 %)
    figures = _month_figures(demo)
    for entity in ENTITIES:
        cap, rep, busy = (sum(f[k] for (e, _), f in figures.items() if e == entity) for k in ("cap", "rep", "busy"))
        printed = dict(zip(("capacity", "reported", "coverage", "busy", "idle", "util", "unreported"), usage[entity]))
        assert printed == {
            "capacity": _h(cap), "reported": _h(rep), "coverage": _pct(rep, cap), "busy": _h(busy),
            "idle": _h(rep - busy), "util": _pct(busy, rep), "unreported": _h(cap - rep),
        }, entity
    # several projects per entity run jobs (plus the unattributed idle gaps)
    projects = dict(duckdb.sql(
        f"select entity, count(distinct project) from {_raw(demo)} where project <> 'unattributed' group by entity"
    ).fetchall())
    assert sorted(projects) == list(ENTITIES) and min(projects.values()) >= 2, projects
    # the failure modes are in the month: a GPU lost, refused lines kept in quarantine (as many
    # as the quarantine table holds, read through its Delta log)
    (lost,) = duckdb.sql(f"select count(*) from {_raw(demo)} where list_contains(flags, 'gpu_lost')").fetchall()[0]
    assert lost > 0
    quarantine = DeltaTable(str(demo["data"] / "quarantine")).file_uris()
    (refused,) = duckdb.sql(f"select count(*) from read_parquet({quarantine!r}, hive_partitioning = false)").fetchall()[0]
    assert refused > 0 and f"refused {refused:,}," in demo["stdout"] + demo.get("stderr", "")
    # the coverage and utilisation breaches are exactly those the registry's thresholds give
    # for the derived figures, each said as a sentence with its numbers
    low, under = (Decimal(doc["compliance"][k]) for k in ("low_coverage_below", "under_use_below"))
    expected = set()
    for (entity, model), f in figures.items():
        name = doc["entities"][entity]["display_name"]
        if f["cap"] and f["rep"] / f["cap"] < low:
            expected.add(
                f"  - {name}, {model}: coverage {_pct(f['rep'], f['cap'])} is below {low * 100:.0f}%: "
                f"{_h(f['cap'] - f['rep'])} GPU-hours of its {f['gpus']:,} allocated GPUs reported nothing "
                "(down, stopped, or no collector)."
            )
        if f["rep"] and f["busy"] / f["rep"] < under:
            expected.add(
                f"  - {name}, {model}: utilisation {_pct(f['busy'], f['rep'])} is below {under * 100:.0f}%: "
                f"{_h(f['busy'])} busy of {_h(f['rep'])} reported GPU-hours."
            )
    printed = {line for line in demo["stdout"].splitlines() if line.startswith("  - ")}
    assert expected and {b for b in printed if ": coverage " in b or ": utilisation " in b} == expected
    assert "SIMULATED DATA" in demo["stdout"]


def test_the_printed_amount_is_the_billed_hours_at_the_registry_rates(demo) -> None:
    billing = _rows(demo["stdout"], "entity   reported")
    usage = expected_usage_lines(demo["data"])
    corrections = expected_corrections(demo["data"])
    for entity in ENTITIES:
        reported, attributed, unattributed, billed, amount = (_n(c) for c in billing[entity])
        # reported = attributed + unattributed (each printed to 0.01 h)
        assert abs(reported - attributed - unattributed) <= Decimal("0.01") and unattributed > 0
        # billed = attributed usage + corrections of earlier months (only gov has some)
        late_us = sum(us for (e, _, _), (us, _, _) in corrections.items() if e == entity)
        assert billed == Decimal(_shown(_billed_us(demo, entity))) and (late_us > 0) == (entity == "gov")
        assert abs(billed - attributed - Decimal(late_us) / US_PER_HOUR) <= Decimal("0.01")
        # the amount: each day's usage of the raw events × the card in force that day, from the
        # registry file (tomllib), less the project's class discount, truncated per line, plus
        # the corrections re-derived from September's raw events
        expected = sum((amount for (e, *_), (_, amount) in usage.items() if e == entity), Decimal(0))
        expected += sum((amount for (e, _, _), (_, amount, _) in corrections.items() if e == entity), Decimal(0))
        assert amount == expected == Decimal(demo["totals"][f"amount_krw.{entity}"])
    assert _n(billing["total"][4]) == Decimal(demo["totals"]["amount_krw.ALL"])


def toml_card(entity: str, model: str, day: date) -> dict:
    """The rate card in force for ``entity`` × ``model`` on ``day``, straight from the registry file."""
    with DEMO_REGISTRY.open("rb") as f:
        doc = tomllib.load(f, parse_float=Decimal)
    (card,) = [
        r for r in doc["rates"]
        if r["entity"] == entity and r["gpu_model"] == model
        and r["effective_from"] <= day <= r.get("effective_to", date.max)
    ]
    return card


def toml_rate(entity: str, model: str, project: str, day: date) -> Decimal:
    """KRW per GPU-hour for a project on ``day``, straight from the registry file."""
    with DEMO_REGISTRY.open("rb") as f:
        doc = tomllib.load(f, parse_float=Decimal)
    assert doc["billing"].get("rounding", "truncate") == "truncate"  # the rule the expected amounts apply
    klass = doc["projects"][project].get("class")
    card = toml_card(entity, model, day)
    discount = Decimal(str(card.get("discounts", {}).get(klass, 0))) if klass else Decimal(0)
    return Decimal(str(card["krw_per_gpu_hour"])) * (100 - discount) / 100


def _truncated(us: int, rate: Decimal) -> Decimal:
    return (Decimal(us) * rate / US_PER_HOUR).quantize(Decimal(1), rounding=ROUND_DOWN)


def expected_usage_lines(data: Path) -> dict[tuple[str, str, str, date], tuple[int, Decimal]]:
    """(entity, project, model, first day of the card) → (GPU-µs, KRW) from the month's raw
    events: each KST day's attributed usage goes to the card in force that day."""
    daily = duckdb.sql(
        f"select entity, project, gpu_model, date, sum(gpu_microseconds)::BIGINT "
        f"from {_raw({'data': data})} where period = '{PERIOD}' and project <> 'unattributed' "
        f"group by all"
    ).fetchall()
    us_by: dict[tuple[str, str, str, date], int] = {}
    for entity, project, model, day, us in daily:
        card = toml_card(entity, model, day if isinstance(day, date) else date.fromisoformat(day))
        key = (entity, project, model, card["effective_from"])
        us_by[key] = us_by.get(key, 0) + us
    return {
        (e, p, m, since): (us, _truncated(us, toml_rate(e, m, p, max(since, date(2026, 10, 1)))))
        for (e, p, m, since), us in us_by.items()
    }


def expected_corrections(data: Path) -> dict[tuple[str, str, str], tuple[int, Decimal, Decimal]]:
    """(entity, project, model) → (late GPU-µs, correction KRW, rate) for September, from raw:
    gov-n03's events of 30 September 12:00-24:00 KST came after September's close, so the
    correction is September re-priced with them, less September as closed without them."""
    rows = duckdb.sql(
        f"select entity, project, gpu_model, sum(gpu_microseconds)::BIGINT, "
        f"(sum(gpu_microseconds) filter (where node = 'gov-n03' "
        f"and interval_start >= timestamp '2026-09-30 03:00:00'))::BIGINT "
        f"from {_raw({'data': data})} where period = '{PREVIOUS}' and project <> 'unattributed' "
        f"group by all"
    ).fetchall()
    out = {}
    for entity, project, model, total_us, late_us in rows:
        if late_us:
            rate = toml_rate(entity, model, project, date(2026, 9, 30))
            out[(entity, project, model)] = (
                late_us, _truncated(total_us, rate) - _truncated(total_us - late_us, rate), rate
            )
    return out


def test_summary_csv_and_manifest_agree_to_the_last_digit(demo) -> None:
    raw = (demo["finance"] / "summary.csv").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")  # UTF-8 with a BOM: Excel opens the Korean names intact
    rows = {r["entity"]: r for r in csv.DictReader(raw.decode("utf-8-sig").splitlines())}
    assert sorted(rows) == list(ENTITIES)
    for entity, row in rows.items():
        # GPU-hours a person reads: the exact usage rounded once to 2 places (the manifest keeps 6)
        assert row["billed_gpu_hours"] == _shown(_billed_us(demo, entity))
        assert row["total_krw"] == demo["totals"][f"amount_krw.{entity}"]
        assert Decimal(row["reported_gpu_hours"]) == Decimal(row["busy_gpu_hours"]) + Decimal(row["idle_gpu_hours"])
        assert Decimal(row["reported_gpu_hours"]) == Decimal(row["attributed_gpu_hours"]) + Decimal(
            row["unattributed_gpu_hours"]
        )
        assert row["statement_no"] == f"GL-202610-{entity.upper()}-{demo['content'][:8].upper()}"
        assert Decimal(row["vat_krw"]) == (Decimal(row["total_krw"]) / 10).quantize(Decimal(1), rounding=ROUND_DOWN)
    readme = (demo["data"] / "exports" / PERIOD / "auditor" / "README.md").read_text()
    gov = rows["gov"]
    sealed = demo["totals"]["billed_gpu_hours.gov"]
    assert f"| gov | {sealed} | {gov['usage_krw']} | {gov['correction_krw']} | {gov['total_krw']} |" in readme


def test_the_statement_is_a_statement(demo) -> None:
    book = openpyxl.load_workbook(demo["finance"] / "statement-gov.xlsx")
    sheet = book.active
    text = [c.value for row in sheet.iter_rows(max_row=14) for c in row if isinstance(c.value, str)]
    # header: the entity's display name, the KST period, the number from the seal, the seal itself
    assert any(t.startswith("대한민국 정부 (state pool) (gov) · 등록번호 305-82-00070") for t in text)
    assert "2026-10-01 00:00 – 2026-11-01 00:00 KST (2026년 10월)" in text
    assert f"GL-202610-GOV-{demo['content'][:8].upper()}" in text
    assert demo["sha"] in text
    assert any(t.startswith("모의 데이터 — SIMULATED DATA") for t in text)
    # lines: Korean and English headings; hours with separators; discounts as percent
    head = find_row(sheet, "구분")
    headings = [c.value for c in sheet[head] if c.value]
    assert "금액 (원)\nAmount (KRW)" in headings and "할인\nDiscount" in headings
    col = {h.split("\n")[1]: i + 1 for i, h in enumerate(headings)}
    first_line = head + 1
    lines = [r for r in range(first_line, first_line + 40) if sheet.cell(r, col["Project"]).value]
    (ledger_lines,) = duckdb.sql(
        f"select count(*) from read_parquet('{demo['data']}/ledgers/billing/period={PERIOD}/*.parquet') where entity = 'gov'"
    ).fetchall()[0]
    # one row per line of the month's billing ledger: projects × models, and the corrections of September
    assert len(lines) == ledger_lines > len(expected_corrections(demo["data"])) > 0
    snu = next(r for r in lines if sheet.cell(r, col["Project"]).value == "snu-llm")
    assert sheet.cell(snu, col["Discount"]).value == 0.5 and sheet.cell(snu, col["Discount"]).number_format == "0%"
    assert sheet.cell(snu, col["GPU-hours"]).number_format == "#,##0.00"
    assert sheet.cell(snu, col["Amount (KRW)"]).number_format == "#,##0"
    # totals: formulas that a spreadsheet computes to the ledger, VAT by the registry rule
    ledger = Decimal(demo["totals"]["amount_krw.gov"])
    assert evaluate(sheet, formula_right_of(sheet, "공급가액 Subtotal")) == ledger
    corrections_krw = sum((amount for _, amount, _ in expected_corrections(demo["data"]).values()), Decimal(0))
    assert evaluate(sheet, formula_right_of(sheet, "사용료 Usage")) == ledger - corrections_krw
    assert evaluate(sheet, formula_right_of(sheet, "정정 Corrections")) == corrections_krw
    assert evaluate(sheet, formula_right_of(sheet, "부가세 VAT")) == (ledger / 10).quantize(Decimal(1), rounding=ROUND_DOWN)
    total = evaluate(sheet, formula_right_of(sheet, "합계 Total"))
    assert total == ledger + (ledger / 10).quantize(Decimal(1), rounding=ROUND_DOWN)
    # billed hours: the exact usage rounded once to 2 places, as in summary.csv, the PDF and the CLI
    hours = sheet.cell(find_row(sheet, "청구 GPU·시간 합계"), col["GPU-hours"]).value
    assert f"{hours:.2f}" == _shown(_billed_us(demo, "gov"))


def test_the_programme_workbook_consolidates_every_entity(demo) -> None:
    book = openpyxl.load_workbook(demo["finance"] / f"programme-{PERIOD}.xlsx")
    assert book.sheetnames == ["청구 Billing", "활용 Usage", "줄 Lines", "용어 Terms"]
    billing = book["청구 Billing"]
    for entity in ENTITIES:
        row = find_row(billing, registry_name(entity))
        assert billing.cell(row, 2).value == entity
        assert evaluate(billing, billing.cell(row, 7).value) == Decimal(demo["totals"][f"amount_krw.{entity}"])
    total = find_row(billing, "합계 Total")
    assert billing.cell(total, 7).value.startswith("=SUM(")
    assert evaluate(billing, billing.cell(total, 7).value) == Decimal(demo["totals"]["amount_krw.ALL"])
    assert f"{billing.cell(total, 4).value:.2f}" == _shown(_billed_us(demo, None))
    usage = book["활용 Usage"]
    samsung = find_row(usage, "삼성전자")
    unreported = sum(f["cap"] - f["rep"] for (e, _), f in _month_figures(demo).items() if e == "samsung")
    assert f"{usage.cell(samsung, 9).value:.2f}" == f"{unreported:.2f}" != "0.00"  # unreported GPU-hours
    terms = [c.value for c in book["용어 Terms"]["B"]]
    assert "unattributed (not billed)" in terms and "coverage" in terms
    lines = book["줄 Lines"]
    assert lines.max_row - 1 == duckdb.connect().execute(
        f"select count(*) from read_parquet('{demo['data']}/ledgers/billing/period={PERIOD}/*.parquet')"
    ).fetchone()[0]


def test_the_report_says_what_a_ministry_official_needs(demo) -> None:
    page = demo["page"]
    registry = load_registry(DEMO_REGISTRY)
    for entity in ENTITIES:
        assert f"<td>{registry.entities[entity].display_name}</td>" in page
        assert f"<td>{entity}</td>" not in page
    assert "모의 데이터 — SIMULATED DATA" in page
    assert demo["sha"] in page and "Verified:" in page
    assert "삼성전자 Samsung Electronics · NVIDIA B200: 보고율 97.8%로 기준 98% 미만입니다." in page
    assert re.search(r"<tr><td>samsung-n01</td>.*?<td>48</td><td class=\"text\">10-13 00:00 → 10-15 00:00 \(48 h\)", page)
    assert "가동 ÷ 보고 (busy ÷ reported)" in page and "보고 ÷ 할당 용량 (reported ÷ capacity)" in page
    assert "@media print" in page


def registry_name(entity: str) -> str:
    return load_registry(DEMO_REGISTRY).entities[entity].display_name


def _csv_lines(demo, entity: str) -> list[dict[str, str]]:
    raw = (demo["finance"] / f"statement-{entity}.csv").read_bytes().decode("utf-8-sig")
    return list(csv.DictReader(raw.splitlines()))


def _xlsx_lines(demo, entity: str) -> tuple[object, list[dict[str, object]]]:
    """The statement workbook's sheet and its lines, as {English heading: cell value}."""
    sheet = openpyxl.load_workbook(demo["finance"] / f"statement-{entity}.xlsx").active
    head = find_row(sheet, "구분")
    headings = [(i + 1, c.value.split("\n")[1]) for i, c in enumerate(sheet[head]) if c.value]
    lines = []
    for r in range(head + 1, head + 60):
        if not sheet.cell(r, 1).value or not str(sheet.cell(r, 1).value).startswith(("사용", "정정")):
            break
        lines.append({name: sheet.cell(r, col).value for col, name in headings})
    return sheet, lines


def _page_rows(page: str, heading: str) -> list[list[str]]:
    """The cells of the report table under ``<h2>heading``, as text, header row left out."""
    start = page.index(f"<h2>{heading}")
    table = page[page.index("<table>", start) : page.index("</table>", start)]
    rows = [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in table.split("<tr")[2:]]
    return [[html.unescape(cell) for cell in row] for row in rows]


def test_the_correction_of_september_reads_the_same_in_every_output(demo) -> None:
    expected = expected_corrections(demo["data"])
    # the story: gov-n03's 12 late hours (8 GPUs) are stored once, and September as closed
    # (its sealed ledger) billed exactly the usage without them
    (late_events,) = duckdb.sql(
        f"select count(*) from {_raw(demo)} where node = 'gov-n03' "
        f"and interval_start >= timestamp '2026-09-30 03:00:00' and interval_start < timestamp '2026-09-30 15:00:00'"
    ).fetchall()[0]
    assert late_events == 12 * 8
    assert {k[0] for k in expected} == {"gov"} and {k[2] for k in expected} == {"NVIDIA GB200"} and len(expected) >= 2
    closed = duckdb.sql(
        f"select project, gpu_microseconds::BIGINT, amount_krw from read_parquet("
        f"'{demo['data']}/ledgers/billing/period={PREVIOUS}/*.parquet') where entity = 'gov' and gpu_model = 'NVIDIA GB200'"
    ).fetchall()
    sept_now = dict(duckdb.sql(
        f"select project, sum(gpu_microseconds)::BIGINT from {_raw(demo)} "
        f"where period = '{PREVIOUS}' and entity = 'gov' and gpu_model = 'NVIDIA GB200' group by all"
    ).fetchall())
    for project, us, amount in closed:
        late_us = expected.get(("gov", project, "NVIDIA GB200"), (0,))[0]
        assert us == sept_now[project] - late_us
    # the statement CSV (the ledger's lines): one correction line per project that ran then
    lines = [r for r in _csv_lines(demo, "gov") if r["charge_class"] == "correction"]
    assert {(r["project"], r["gpu_model"]) for r in lines} == {(p, m) for _, p, m in expected}
    for r in lines:
        late_us, amount, rate = expected[("gov", r["project"], r["gpu_model"])]
        assert r["period"] == PERIOD and r["corrects_period"] == PREVIOUS
        assert (r["rate_from"], r["rate_to"]) == ("2026-09-01", "2026-09-30")
        assert Decimal(r["gpu_hours"]) == (Decimal(late_us) / US_PER_HOUR).quantize(Decimal("0.000001"))
        assert Decimal(r["rate_krw_per_gpu_hour"]) == rate and Decimal(r["amount_krw"]) == amount
    total = sum((amount for _, amount, _ in expected.values()), Decimal(0))
    assert total > 0
    # the statement workbook: the same lines, and its corrections total computes to their sum
    sheet, xlsx = _xlsx_lines(demo, "gov")
    shown = {(x["Project"], x["Corrects"], Decimal(str(x["Amount (KRW)"]))) for x in xlsx if x["Charge"] == "정정 correction"}
    assert shown == {(p, PREVIOUS, amount) for (_, p, _), (_, amount, _) in expected.items()}
    assert evaluate(sheet, formula_right_of(sheet, "정정 Corrections")) == total
    # the summary CSV and the report: the same amounts, said as corrections of 2026-09
    summary = {r["entity"]: r for r in csv.DictReader((demo["finance"] / "summary.csv").read_text("utf-8-sig").splitlines())}
    assert {e: Decimal(summary[e]["correction_krw"]) for e in ENTITIES} == {e: total if e == "gov" else 0 for e in ENTITIES}
    rows = _page_rows(demo["page"], "이전 달 정정")
    gov = registry_name("gov")
    assert rows[:-1] == [
        [PREVIOUS, gov, p, m, "2026-09-01 – 09-30", f"{rate:,.2f}", f"{Decimal(_shown(late_us)):,.2f}", f"{amount:,}"]
        for (_, p, m), (late_us, amount, rate) in sorted(expected.items())
    ]
    assert rows[-1][0] == "합계 (total)" and rows[-1][-1] == f"{total:,}"
    # the printed summary says why gov's billed hours exceed its attributed ones
    late = sum(late_us for late_us, _, _ in expected.values())
    assert f"  gov: {PREVIOUS}, {Decimal(_shown(late)):,.2f} GPU-hours, {total:,} won ({len(expected)} lines)" in demo["stdout"]


def test_the_rate_change_prices_each_day_at_its_card(demo) -> None:
    # the registry file: Naver's GB200 card changes on 16 October
    first, second = toml_card("naver", "NVIDIA GB200", date(2026, 10, 15)), toml_card("naver", "NVIDIA GB200", date(2026, 10, 16))
    assert (first["effective_to"], second["effective_from"]) == (date(2026, 10, 15), date(2026, 10, 16))
    old, new = Decimal(str(first["krw_per_gpu_hour"])), Decimal(str(second["krw_per_gpu_hour"]))
    assert old != new
    # the raw events of days 1-15 and of days 16-31, per project, each at its card
    us = dict(((p, late), v) for p, late, v in duckdb.sql(
        f"select project, date >= '2026-10-16', sum(gpu_microseconds)::BIGINT from {_raw(demo)} "
        f"where period = '{PERIOD}' and entity = 'naver' "
        f"and gpu_model = 'NVIDIA GB200' and project <> 'unattributed' group by all"
    ).fetchall())
    projects = sorted({p for p, _ in us})
    assert len(projects) == 2 and all(us[(p, False)] > 0 and us[(p, True)] > 0 for p in projects)
    segments = {False: ("2026-10-01", "2026-10-15", old), True: ("2026-10-16", "2026-10-31", new)}
    expected = {
        (p, *segments[late][:2]): (us[(p, late)], segments[late][2], _truncated(us[(p, late)], segments[late][2]))
        for p, late in us
    }
    # the statement CSV: two lines per project, one per card, each with its days' hours
    lines = [r for r in _csv_lines(demo, "naver") if r["gpu_model"] == "NVIDIA GB200"]
    assert {(r["project"], r["rate_from"], r["rate_to"]) for r in lines} == set(expected)
    for r in lines:
        line_us, rate, amount = expected[(r["project"], r["rate_from"], r["rate_to"])]
        assert Decimal(r["gpu_hours"]) == (Decimal(line_us) / US_PER_HOUR).quantize(Decimal("0.000001"))
        assert Decimal(r["list_rate_krw_per_gpu_hour"]) == rate and Decimal(r["amount_krw"]) == amount
    # the workbook: each line's dates and list rate as cells
    _, xlsx = _xlsx_lines(demo, "naver")
    shown = {
        (x["Project"], f"{x['Rate from']:%Y-%m-%d}", f"{x['Rate to']:%Y-%m-%d}", Decimal(str(x["List rate (KRW/h)"])),
         Decimal(str(x["Amount (KRW)"])))
        for x in xlsx if x["GPU model"] == "NVIDIA GB200"
    }
    assert shown == {(p, a, b, rate, amount) for (p, a, b), (_, rate, amount) in expected.items()}
    # the report: one row per card, hours and KRW summed over the projects
    rows = _page_rows(demo["page"], "월중 요율 변경")
    assert rows == [
        [registry_name("naver"), "NVIDIA GB200", f"{a} – {b[5:]}", f"{rate:,.2f}", f"{rate:,.2f}",
         f"{Decimal(_shown(sum(us[(p, late)] for p in projects))):,.2f}",
         f"{sum(_truncated(us[(p, late)], rate) for p in projects):,}"]
        for late, (a, b, rate) in sorted(segments.items())
    ]


def test_the_reconfigured_gpu_adds_up_to_every_hour(demo) -> None:
    """naver-n00's first GPU: whole until 11 October 00:00 KST, then MIG 3 + 2 + 1 + 1 of 7."""
    raw = _raw(demo)
    (gpu,) = [g for (g,) in duckdb.sql(
        f"select distinct gpu_uuid from {raw} where node = 'naver-n00' and device_uuid <> gpu_uuid"
    ).fetchall()]
    rows = duckdb.sql(
        f"select device_uuid = gpu_uuid, mig_profile, gpu_fraction, interval_start, gpu_microseconds::BIGINT "
        f"from {raw} where gpu_uuid = '{gpu}' and period = '{PERIOD}'"
    ).fetchall()
    switch = duckdb.sql("select timestamptz '2026-10-11 00:00:00+09'").fetchall()[0][0]
    whole = [r for r in rows if r[0]]
    mig = [r for r in rows if not r[0]]
    # whole before the switch, instances after, never both in one hour
    assert whole and all(r[3] < switch for r in whole) and all(r[3] >= switch for r in mig)
    assert len(whole) == 10 * 24 and sorted({(r[1], r[2]) for r in mig}) == sorted(
        {("3g.90gb", 3 / 7), ("2g.45gb", 2 / 7), ("1g.23gb", 1 / 7)}
    )
    assert len(mig) == 4 * 21 * 24
    # each event is its k/7 of the hour, to the microsecond (k/7 of 3.6e9 µs, rounded once)
    for is_whole, _, fraction, _, us in rows:
        k = 7 if is_whole else round(fraction * 7)
        assert us == round(Fraction(US_PER_HOUR * k, 7))
    # and every hour of the month the GPU's devices add up to exactly one GPU-hour
    per_hour: dict[object, int] = {}
    for _, _, _, start, us in rows:
        per_hour[start] = per_hour.get(start, 0) + us
    assert len(per_hour) == HOURS and set(per_hour.values()) == {US_PER_HOUR}
    assert sum(r[4] for r in whole) == 240 * US_PER_HOUR and sum(r[4] for r in mig) == 504 * US_PER_HOUR
    # the hourly roll-up the close priced from says the same
    (hourly,) = duckdb.sql(
        f"select sum(gpu_microseconds)::BIGINT from read_parquet('{demo['data']}/usage_hourly/**/*.parquet') "
        f"where gpu_uuid = '{gpu}' and period = '{PERIOD}'"
    ).fetchall()[0]
    assert hourly == HOURS * US_PER_HOUR
