"""What a person reads after ``gpuledger demo``: the summary, the statements, the report.

One demo month (October 2026: 31 days, 744 hours) of the default fleet (the programme scaled
down: 33 nodes × 8 GPUs, gpuledger/demo.py FLEET)
against the default demo programme registry, then each human-facing output is read the way
its reader would — the printed tables, the XLSX cells and formulas (openpyxl), the HTML —
and checked against the registry, the ledgers and the sealed manifest.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import tomllib
from collections import defaultdict
from datetime import date, timedelta
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
HOURS = 744
ENTITIES = ("gov", "hyundai", "naver", "samsung", "skt")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory):
    from tests.e2e.conftest import run_cli

    data = tmp_path_factory.mktemp("demo") / "data"
    result = run_cli("demo", "--data-dir", str(data), "--month", PERIOD)
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
        f"select sum(gpu_microseconds)::BIGINT from read_parquet('{demo['data']}/ledgers/billing/**/*.parquet') {where}"
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
    lines = duckdb.sql(
        f"select entity, project, gpu_model, rate_from, gpu_microseconds "
        f"from read_parquet('{demo['data']}/ledgers/billing/**/*.parquet') where charge_class = 'usage'"
    ).fetchall()
    for entity in ENTITIES:
        reported, attributed, unattributed, billed, amount = (_n(c) for c in billing[entity])
        # reported = attributed + unattributed (each printed to 0.01 h); billed = attributed
        assert abs(reported - attributed - unattributed) <= Decimal("0.01")
        assert billed == attributed and unattributed > 0
        # the amount is each line's usage × the rate card of the registry file in force on the
        # line's first day (read here with tomllib, not through gpuledger), less the project's
        # class discount, truncated (the registry's rounding rule, checked below)
        expected = sum(
            (
                (Decimal(us) * toml_rate(e, model, project, day) / Decimal(3_600_000_000)).quantize(
                    Decimal(1), rounding=ROUND_DOWN
                )
                for e, project, model, day, us in lines
                if e == entity
            ),
            Decimal(0),
        )
        assert amount == expected == Decimal(demo["totals"][f"amount_krw.{entity}"])
    assert _n(billing["total"][4]) == Decimal(demo["totals"]["amount_krw.ALL"])


def toml_rate(entity: str, model: str, project: str, day: date) -> Decimal:
    """KRW per GPU-hour for a project on ``day``, straight from the registry file."""
    with DEMO_REGISTRY.open("rb") as f:
        doc = tomllib.load(f, parse_float=Decimal)
    assert doc["billing"].get("rounding", "truncate") == "truncate"  # the rule the expected amounts apply
    klass = doc["projects"][project].get("class")
    (card,) = [
        r for r in doc["rates"]
        if r["entity"] == entity and r["gpu_model"] == model
        and r["effective_from"] <= day <= r.get("effective_to", date.max)
    ]
    discount = Decimal(str(card.get("discounts", {}).get(klass, 0))) if klass else Decimal(0)
    return Decimal(str(card["krw_per_gpu_hour"])) * (100 - discount) / 100


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
    assert f"| gov | {sealed} | {gov['usage_krw']} | 0 | {gov['total_krw']} |" in readme


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
        f"select count(*) from read_parquet('{demo['data']}/ledgers/billing/**/*.parquet') where entity = 'gov'"
    ).fetchall()[0]
    assert len(lines) == ledger_lines > 1  # one row per line of the billing ledger (projects × models)
    snu = next(r for r in lines if sheet.cell(r, col["Project"]).value == "snu-llm")
    assert sheet.cell(snu, col["Discount"]).value == 0.5 and sheet.cell(snu, col["Discount"]).number_format == "0%"
    assert sheet.cell(snu, col["GPU-hours"]).number_format == "#,##0.00"
    assert sheet.cell(snu, col["Amount (KRW)"]).number_format == "#,##0"
    # totals: formulas that a spreadsheet computes to the ledger, VAT by the registry rule
    ledger = Decimal(demo["totals"]["amount_krw.gov"])
    assert evaluate(sheet, formula_right_of(sheet, "공급가액 Subtotal")) == ledger
    assert evaluate(sheet, formula_right_of(sheet, "사용료 Usage")) == ledger
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
        f"select count(*) from read_parquet('{demo['data']}/ledgers/billing/**/*.parquet')"
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
