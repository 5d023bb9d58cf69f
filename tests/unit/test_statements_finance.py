"""What a Korean finance office receives: the statement PDF read back as text (pdftotext), the
XLSX cells (openpyxl), the CSV bytes, and sub-account statements that sum to the won."""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
from decimal import Decimal
from pathlib import Path

import openpyxl
import pytest

from accounting.export import export_month
from accounting.figures import apportion, shown_billed_hours, small_hours_text
from accounting.registry import load_registry, loads_registry
from storage.dataset import Store
from tests.unit.audit_month_fixture import PERIOD, build_month
from tests.unit.xlsx_formulas import evaluate, find_row

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
B200 = "NVIDIA B200"


def pdf_text(path: Path) -> str:
    """The PDF's text as a reader copies it (poppler's pdftotext, Debian poppler-utils)."""
    if shutil.which("pdftotext") is None:
        if os.environ.get("GPULEDGER_CI"):
            pytest.fail("pdftotext (poppler-utils) is missing: .ci/run installs it")
        pytest.skip("pdftotext (poppler-utils) not installed")
    return subprocess.run(["pdftotext", "-layout", str(path), "-"], check=True, capture_output=True, text=True).stdout


def _export(tmp_path: Path, registry_path: Path = REPO / "examples" / "registry.toml") -> Path:
    store = build_month(tmp_path / "data")
    export_month(store, PERIOD, tmp_path / "out", registry=load_registry(registry_path))
    return tmp_path / "out" / PERIOD / "finance"


def test_the_pdf_statement_says_in_korean_who_bills_whom_what_and_when(tmp_path: Path) -> None:
    # given the hand-worked month (gov 7,001 usage + 2,000 correction = 9,001 KRW) and the sample registry
    finance = _export(tmp_path)
    # when the finance clerk opens gov's statement PDF
    text = pdf_text(finance / "statement-gov.pdf")
    flat = " ".join(text.split())
    # then it is a 거래명세서 with the supplier and the recipient, each with 사업자등록번호 and address
    assert "거래명세서 (청구서)" in text
    assert "공급자 Supplier" in text and "공급받는자 Recipient" in text
    assert "국가AI컴퓨팅센터 운영기관 (sample)" in text and "101-82-00013" in text and "김하늘 (sample)" in text
    assert "대한민국 정부 (state pool)" in text and "305-82-00070" in text and "세종특별자치시 도움6로 11 (sample)" in text
    # issue date: the last KST day of the month; due 30 days later; the payment account
    assert re.search(r"작성일 Issue date\s+2026-11-30", text) and re.search(r"지급 기한 Due date\s+2026-12-30", text)
    assert "한국은행 국고 000-000000-00-000" in text
    # lines and totals at the one precision: GPU-hours to 2 places, whole won
    assert re.search(r"사용 usage\s+snu-llm\s+NVIDIA B200\s+2026-11-01 – 11-30\s+3\.50\s+2,000\.50\s+0%\s+2,000\.50\s+7,001", text)
    assert re.search(r"청구 GPU·시간 Billed GPU-hours\s+4\.50", text)
    assert re.search(r"공급가액 Subtotal \(원\)\s+9,001", text)
    assert re.search(r"부가세 VAT 10% \(원\)\s+900", text) and re.search(r"합계 Total incl\. VAT \(원\)\s+9,901", text)
    # the seal and the statement number on the page
    assert "GL-202611-GOV-" in flat and "봉인 Manifest SHA-256" in flat
    # real data: no simulated mark
    assert "SIMULATED" not in text


def test_a_registry_without_the_parties_still_exports_and_says_what_is_missing(tmp_path: Path) -> None:
    # given the hand-worked month exported without a registry (backward compatible: no [supplier])
    store = build_month(tmp_path / "data")
    export_month(store, PERIOD, tmp_path / "out")
    text = pdf_text(tmp_path / "out" / PERIOD / "finance" / "statement-samsung.pdf")
    # then the blanks are said, never left empty
    assert text.count("등록부에 없음 / not in the registry") >= 6
    assert re.search(r"합계 Total incl\. VAT \(원\)\s+1,017", text)  # 925 + 92 VAT (truncated)


def test_csvs_open_in_excel_with_korean_intact_and_one_format_per_column(tmp_path: Path) -> None:
    finance = _export(tmp_path)
    for name in ("summary.csv", "statement-gov.csv", "sub-accounts.csv", "sub-accounts/statement-gov-snu-llm.csv"):
        raw = (finance / name).read_bytes()
        assert raw.startswith(b"\xef\xbb\xbf"), name  # UTF-8 byte-order mark: Excel reads it as UTF-8
        assert b"\r" not in raw
    rows = list(csv.DictReader((finance / "summary.csv").read_text("utf-8-sig").splitlines()))
    assert rows[0]["display_name"] == "대한민국 정부 (state pool)"
    # one format per column: GPU-hours always with 2 places (0.00, 2160.00), won always whole
    for column in rows[0]:
        values = [r[column] for r in rows]
        if column.endswith("_gpu_hours"):
            assert all(re.fullmatch(r"-?\d+\.\d\d", v) for v in values), (column, values)
        if column.endswith("_krw"):
            assert all(re.fullmatch(r"-?\d+", v) for v in values), (column, values)
    hyundai = next(r for r in rows if r["entity"] == "hyundai")
    assert hyundai["capacity_gpu_hours"] == "0.00" and hyundai["total_krw"] == "0"


def _naive_month(tmp_path: Path):
    """gov's two projects across its mid-month rate change, each line's exact amount with a fraction
    (golden registry, truncate; VAT 5.5 %)::

        snu-llm           2000.00 KRW/h × 0.5003   h = 1000.60  → 1000
        snu-llm           2100.00 KRW/h × 0.500333 h = 1050.70  → 1050   project 2,050 (naive 2,051)
        upstage-pretrain  2800.00 KRW/h × 0.5003   h = 1400.84  → 1400
        upstage-pretrain  2940.00 KRW/h × 0.500333 h = 1470.98  → 1470   project 2,870 (naive 2,871)
        gov subtotal 4,920 (naive: 4,923.12 → 4,923); VAT 5.5 % of 4,920 = 270.6 → 270
        VAT by project, naive: 112.75 → 112 and 157.85 → 157 = 269 ≠ 270
    """
    from acct_given import GOLDEN_REGISTRY, usage, write_usage

    from accounting.close import close_month

    store = Store(tmp_path / "data")
    rows = []
    for project, gpu in (("snu-llm", "GPU-1"), ("upstage-pretrain", "GPU-2")):
        rows.append(usage("2026-11-10T03:00", "gov", project, B200, gpu, gpu_us=1_801_080_000))
        rows.append(usage("2026-11-20T03:00", "gov", project, B200, gpu, gpu_us=1_801_200_000))
    write_usage(store, rows, "b1")
    registry = loads_registry(GOLDEN_REGISTRY.replace('rounding = "truncate"', 'rounding = "truncate"\nvat_percent = 5.5'))
    close_month(store, registry, "2026-11")
    export_month(store, "2026-11", tmp_path / "out", registry=registry)
    return tmp_path / "out" / "2026-11" / "finance"


def test_sub_accounts_sum_to_the_entity_to_the_won_where_naive_rounding_would_not(tmp_path: Path) -> None:
    # given gov's month whose per-project and per-VAT naive rounding would miss by a won (see _naive_month)
    finance = _naive_month(tmp_path)
    # when the finance clerk reads summary.csv and sub-accounts.csv
    summary = {r["entity"]: r for r in csv.DictReader((finance / "summary.csv").read_text("utf-8-sig").splitlines())}
    subs = {r["project"]: r for r in csv.DictReader((finance / "sub-accounts.csv").read_text("utf-8-sig").splitlines())}
    # then each project's subtotal is the sum of its lines' rounded amounts (never re-rounded) ...
    assert {p: r["subtotal_krw"] for p, r in subs.items()} == {"snu-llm": "2050", "upstage-pretrain": "2870"}
    assert summary["gov"]["total_krw"] == "4920"
    # ... VAT is the entity's once (270), split by largest remainder (112.5 / 157.5 → 113 + 157)
    assert summary["gov"]["vat_krw"] == "270"
    assert {p: r["vat_krw"] for p, r in subs.items()} == {"snu-llm": "113", "upstage-pretrain": "157"}
    # ... so the sub-accounts sum to the entity's statement to the won
    for column, entity_column in (("subtotal_krw", "total_krw"), ("vat_krw", "vat_krw"), ("total_krw", "total_with_vat_krw")):
        assert sum(int(r[column]) for r in subs.values()) == int(summary["gov"][entity_column])
    # and every reader shows it: the entity XLSX's sub-account sheet computes the same sums
    sheet = openpyxl.load_workbook(finance / "statement-gov.xlsx")["세부 계정 Sub-accounts"]
    total = find_row(sheet, "합계 Total (= 명세서)")
    assert [evaluate(sheet, sheet.cell(total, c).value) for c in (5, 6, 7)] == [Decimal(4920), Decimal(270), Decimal(5190)]
    # the sub-account's own PDF: its lines, its VAT share, its parent's number
    text = pdf_text(finance / "sub-accounts" / "statement-gov-snu-llm.pdf")
    assert "세부 계정 sub-account" in text and re.search(r"상위 명세서 Parent statement\s+GL-202611-GOV-", text)
    assert re.search(r"공급가액 Subtotal \(원\)\s+2,050", text) and re.search(r"부가세 VAT 5.5% 몫 share \(원\)\s+113", text)
    assert re.search(r"합계 Total incl\. VAT \(원\)\s+2,163", text) and "upstage-pretrain" not in text
    # its own workbook states the share as a value that Excel's total adds
    sub_sheet = openpyxl.load_workbook(finance / "sub-accounts" / "statement-gov-snu-llm.xlsx").active
    assert evaluate(sub_sheet, sub_sheet.cell(find_row(sub_sheet, "합계 Total (VAT 포함)"), 12).value) == Decimal(2163)


@pytest.mark.parametrize(
    ("total", "weights", "parts"),
    [
        (Decimal(1), [Decimal(5)] * 3, [Decimal(1), Decimal(0), Decimal(0)]),  # naive: trunc(0.5) × 3 = 0
        (Decimal(270), [Decimal(2050), Decimal(2870)], [Decimal(113), Decimal(157)]),
        (Decimal(-10), [Decimal(-30), Decimal(-70)], [Decimal(-3), Decimal(-7)]),
        (Decimal(5), [Decimal(100), Decimal(-40), Decimal(-10)], [Decimal(10), Decimal(-4), Decimal(-1)]),
        (Decimal(0), [Decimal(0), Decimal(0)], [Decimal(0), Decimal(0)]),
    ],
)
def test_apportion_gives_whole_won_that_sum_to_the_total(total, weights, parts) -> None:
    got = apportion(total, weights)
    assert got == parts and sum(got) == total


def test_re_exporting_gives_the_same_bytes_pdf_included(tmp_path: Path) -> None:
    store = build_month(tmp_path / "data")
    registry = load_registry(REPO / "examples" / "registry.toml")
    export_month(store, PERIOD, tmp_path / "a", registry=registry)
    export_month(store, PERIOD, tmp_path / "b", registry=registry)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert any(p.suffix == ".pdf" for p in files) and len(files) > 20
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


def test_a_minute_in_quarantine_is_not_zero_hours() -> None:
    # 60 refused GPU-seconds = 0.016667 GPU-hours: "0.0 GPU-hours" would say nothing was refused
    assert small_hours_text(Decimal("0.016667")) == "0.016667 GPU-hours (60 GPU-seconds)"
    assert small_hours_text(Decimal("2.5")) == "2.50 GPU-hours"
    assert small_hours_text(Decimal(0)) == "0.00 GPU-hours"


def test_billed_hours_are_rounded_once_from_the_microseconds() -> None:
    # 0.0050004 h: via 6 places (0.005000) half-even to 2 places gives 0.00; once, from µs, 0.01
    assert shown_billed_hours(18_001_440) == Decimal("0.01")


def test_one_total_reads_the_same_in_the_cli_the_report_the_workbook_the_csv_and_the_pdf(tmp_path: Path) -> None:
    from accounting.report import render_report
    from gpuledger.cli_common import out
    from gpuledger.summary import print_close_summary

    # given samsung's 1,000,000,000 µs (0.277778 h) billed 925 KRW in the hand-worked month
    store = build_month(tmp_path / "data")
    registry = load_registry(REPO / "examples" / "registry.toml")
    export_month(store, PERIOD, tmp_path / "out", registry=registry)
    render_report(store, PERIOD, tmp_path / "rep", registry=registry)
    finance = tmp_path / "out" / PERIOD / "finance"
    # when each reader reads samsung's billed GPU-hours and amount
    with out.capture() as captured:
        print_close_summary(store, PERIOD, registry=registry)
    cli = next(line.split() for line in captured.get().splitlines() if line.startswith("samsung") and "925" in line)
    page = (tmp_path / "rep" / PERIOD / "report.html").read_text(encoding="utf-8")
    summary = {r["entity"]: r for r in csv.DictReader((finance / "summary.csv").read_text("utf-8-sig").splitlines())}
    sheet = openpyxl.load_workbook(finance / "statement-samsung.xlsx").active
    hours_cell = sheet.cell(find_row(sheet, "청구 GPU·시간 합계"), 8)
    text = pdf_text(finance / "statement-samsung.pdf")
    # then every one says 0.28 GPU-hours and 925 won (not 0 in one, 0.3 in another, 0.277778 in a third)
    assert cli[-2:] == ["0.28", "925"]
    assert re.search(r"<td>삼성전자 Samsung Electronics</td>(<td>[^<]*</td>){9}<td>0\.28</td><td>925</td>", page)
    assert (summary["samsung"]["billed_gpu_hours"], summary["samsung"]["total_krw"]) == ("0.28", "925")
    assert (hours_cell.value, hours_cell.number_format) == (0.28, "#,##0.00")
    assert re.search(r"청구 GPU·시간 Billed GPU-hours\s+0\.28", text) and re.search(r"공급가액 Subtotal \(원\)\s+925", text)


def test_a_sealed_month_speaks_with_the_parties_of_its_sealed_registry(tmp_path: Path) -> None:
    from acct_given import usage, write_usage

    from accounting.close import close_month

    # given a month closed with the sample registry (the close seals its canonical copy)
    store = Store(tmp_path / "data")
    write_usage(store, [usage("2026-11-10T03:00", "gov", "kaist-vision", B200, "GPU-1")], "b1")
    close_month(store, load_registry(REPO / "examples" / "registry.toml"), "2026-11")
    # when it is exported with no registry at all
    export_month(store, "2026-11", tmp_path / "out")
    finance = tmp_path / "out" / "2026-11" / "finance"
    # then the statement still names the supplier, the recipient and the sub-account from the seal
    text = pdf_text(finance / "statement-gov.pdf")
    assert "101-82-00013" in text and "305-82-00070" in text and "한국은행 국고" in text
    sub = pdf_text(finance / "sub-accounts" / "statement-gov-kaist-vision.pdf")
    assert "한국과학기술원 (KAIST)" in sub and "314-82-00093" in sub and "대전광역시 유성구 대학로 291 (sample)" in sub


def test_the_cli_summary_never_cuts_a_figure_to_fit_a_narrow_terminal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gpuledger.cli_common import out
    from gpuledger.summary import print_close_summary

    # given the hand-worked month, and a terminal (or a log) far narrower than the tables
    store = build_month(tmp_path / "data")
    registry = load_registry(REPO / "examples" / "registry.toml")
    monkeypatch.setattr(out, "width", 40)
    # when the close summary is printed
    with out.capture() as captured:
        print_close_summary(store, PERIOD, registry=registry)
    text = captured.get()
    # then no heading or figure is cut to "…": a wide table is printed whole (the viewer wraps it)
    assert "…" not in text, text
    heading = next(line for line in text.splitlines() if line.startswith("entity") and "coverage" in line)
    assert heading.split() == ["entity", "capacity", "reported", "coverage", "busy", "idle", "util.", "unreported"]
    samsung = [line.split() for line in text.splitlines() if line.startswith("samsung")]
    assert samsung[-1][-2:] == ["0.28", "925"]
