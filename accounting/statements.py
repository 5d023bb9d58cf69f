"""Finance workbooks (XLSX): a monthly statement per entity and one programme workbook.

A statement is what a finance team sends: a header (entity display name, KST period,
statement number derived from the sealed manifest, the manifest's SHA-256, the rounding rule),
lines with Korean and English headings, and totals written as **Excel formulas** over the
lines, each with its cached value equal to the ledger to the last won::

    사용료 Usage        =SUMIF(charge column, "usage", amounts)
    정정 Corrections    =SUMIF(charge column, "correction", amounts)
    공급가액 Subtotal   =SUM(amounts)                         = Σ ledger amount_krw
    부가세 VAT          rule(subtotal × vat_percent / 100)    registry [billing] vat_percent
    합계 Total          =subtotal + VAT

Invariants: amounts are whole won stored as integers (exact in Excel up to 2^53); each
formula's cached value is computed here with :class:`~decimal.Decimal` by the same rule the
formula states, so a reader that does not recalculate and one that does show the same number.
Billed GPU-hours in a total are the exact usage rounded once (the manifest's figure), written
as a value with a note: a sum of the 6-place line hours can differ in the last place.
Workbooks are deterministic (fixed creation date), so a re-export gives the same content.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import polars as pl
import xlsxwriter
from xlsxwriter.utility import xl_rowcol_to_cell

from accounting.billing import gpu_hours
from accounting.figures import TERMS, EntityFigures, kst_span
from accounting.registry import RoundingRule

_HUNDRED = Decimal(100)
_CHARGE = {"usage": "사용 usage", "correction": "정정 correction"}
LINE_HEADINGS = (
    ("charge_class", "구분\nCharge"),
    ("corrects_period", "정정 대상 월\nCorrects"),
    ("project", "프로젝트\nProject"),
    ("project_class", "분류\nClass"),
    ("gpu_model", "GPU 모델\nGPU model"),
    ("rate_from", "적용 시작\nRate from"),
    ("rate_to", "적용 끝\nRate to"),
    ("gpu_hours", "GPU·시간\nGPU-hours"),
    ("list_rate_krw_per_gpu_hour", "정가 (원/시간)\nList rate (KRW/h)"),
    ("discount_percent", "할인\nDiscount"),
    ("rate_krw_per_gpu_hour", "적용 단가 (원/시간)\nRate (KRW/h)"),
    ("amount_krw", "금액 (원)\nAmount (KRW)"),
)


@dataclass(frozen=True, slots=True)
class StatementHeader:
    period: str
    entity: str
    display_name: str
    number: str
    manifest_sha256: str
    rounding: RoundingRule
    vat_percent: Decimal
    simulated: bool


def vat(subtotal: Decimal, vat_percent: Decimal, rounding: RoundingRule) -> Decimal:
    """VAT on a statement's subtotal, whole won by the registry's rule (never in the ledger)."""
    return rounding.apply(subtotal * vat_percent / _HUNDRED)


def vat_formula(subtotal_cell: str, vat_cell: str, rounding: RoundingRule) -> str:
    """The Excel formula that computes :func:`vat` (ROUNDDOWN is towards zero, ROUND half away)."""
    x = f"{subtotal_cell}*{vat_cell}/100"
    if rounding is RoundingRule.TRUNCATE:
        return f"=ROUNDDOWN({x},0)"
    if rounding is RoundingRule.HALF_UP:
        return f"=ROUND({x},0)"
    return f"=IF(ABS({x}-TRUNC({x}))=0.5,2*ROUND({x}/2,0),ROUND({x},0))"


class _Formats:
    def __init__(self, book: xlsxwriter.Workbook):
        base = {"font_name": "Malgun Gothic", "font_size": 10, "valign": "vcenter"}
        self.title = book.add_format({**base, "bold": True, "font_size": 15})
        self.banner = book.add_format({**base, "bold": True, "font_color": "#9B2C2C", "bg_color": "#FFF5F5",
                                       "border": 2, "border_color": "#C53030"})
        self.label = book.add_format({**base, "bold": True, "bg_color": "#EDF2F7", "border": 1})
        self.value = book.add_format({**base, "border": 1})
        self.mono = book.add_format({**base, "border": 1, "font_name": "Consolas", "font_size": 9})
        self.head = book.add_format({**base, "bold": True, "text_wrap": True, "bg_color": "#2B6CB0",
                                     "font_color": "#FFFFFF", "border": 1, "align": "center"})
        self.text = book.add_format({**base, "border": 1})
        self.date = book.add_format({**base, "border": 1, "num_format": "yyyy-mm-dd"})
        self.hours = book.add_format({**base, "border": 1, "num_format": "#,##0.000000"})
        self.hours1 = book.add_format({**base, "border": 1, "num_format": "#,##0.0"})
        self.rate = book.add_format({**base, "border": 1, "num_format": "#,##0.00"})
        self.pct = book.add_format({**base, "border": 1, "num_format": "0%"})
        self.pct2 = book.add_format({**base, "border": 1, "num_format": "0.00%"})
        self.pct1 = book.add_format({**base, "border": 1, "num_format": "0.0%"})
        self.won = book.add_format({**base, "border": 1, "num_format": "#,##0"})
        self.int = book.add_format({**base, "border": 1, "num_format": "#,##0"})
        self.total_label = book.add_format({**base, "bold": True, "border": 1, "bg_color": "#EDF2F7"})
        self.total_won = book.add_format({**base, "bold": True, "border": 1, "num_format": "#,##0", "bg_color": "#EDF2F7"})
        self.total_hours = book.add_format({**base, "bold": True, "border": 1, "num_format": "#,##0.000000",
                                            "bg_color": "#EDF2F7"})
        self.note = book.add_format({**base, "italic": True, "font_color": "#4A5568", "text_wrap": True})


def _workbook(buffer: io.BytesIO, title: str, period: str) -> xlsxwriter.Workbook:
    book = xlsxwriter.Workbook(buffer, {"in_memory": True})
    year, month = (int(x) for x in period.split("-"))
    book.set_properties({"title": title, "author": "gpuledger", "created": datetime(year, month, 1)})
    return book


def _header(sheet, fmt: _Formats, title: str, rows: Sequence[tuple[str, str]], simulated: bool, width: int) -> int:
    """Title, the simulated banner when it is, label/value rows; returns the next free row."""
    sheet.merge_range(0, 0, 0, width - 1, title, fmt.title)
    sheet.set_row(0, 24)
    row = 1
    if simulated:
        sheet.merge_range(row, 0, row, width - 1, "모의 데이터 — SIMULATED DATA (gpuledger demo): 실제 청구서가 아닙니다 / "
                          "not an invoice", fmt.banner)
        row += 1
    for label, value in rows:
        sheet.write(row, 0, label, fmt.label)
        sheet.merge_range(row, 1, row, width - 1, value, fmt.mono if label.startswith("봉인") else fmt.value)
        row += 1
    return row + 1


def _period_text(period: str) -> str:
    start, end = kst_span(period)
    return f"{start:%Y-%m-%d %H:%M} – {end:%Y-%m-%d %H:%M} KST ({start.year}년 {start.month}월)"


def statement_xlsx(header: StatementHeader, lines: pl.DataFrame, billed_gpu_hours: Decimal) -> bytes:
    """One entity's monthly statement; ``lines`` are its billing-ledger lines (ledger columns)."""
    buffer = io.BytesIO()
    book = _workbook(buffer, f"GPU 사용료 명세서 {header.period} {header.display_name}", header.period)
    fmt = _Formats(book)
    sheet = book.add_worksheet("명세서 Statement")
    width = len(LINE_HEADINGS)
    rule = {"truncate": "원 미만 절사 (truncate)", "half_up": "반올림 (half up)", "half_even": "오사오입 (half even)"}
    row = _header(
        sheet,
        fmt,
        "GPU 사용료 명세서 · GPU usage statement",
        [
            ("청구 대상 Bill to", f"{header.display_name} ({header.entity})"),
            ("기간 Period (KST)", _period_text(header.period)),
            ("명세서 번호 Statement no.", header.number),
            ("봉인 Manifest SHA-256", header.manifest_sha256),
            ("통화 Currency", f"KRW · 줄마다 원 단위 {rule[header.rounding.value]} · VAT {header.vat_percent}%"),
        ],
        header.simulated,
        width,
    )
    for col, (_, heading) in enumerate(LINE_HEADINGS):
        sheet.write(row, col, heading, fmt.head)
    sheet.set_row(row, 32)
    first = row + 1
    col_of = {name: i for i, (name, _) in enumerate(LINE_HEADINGS)}
    for r, line in enumerate(lines.iter_rows(named=True), start=first):
        sheet.write_string(r, col_of["charge_class"], _CHARGE.get(line["charge_class"], line["charge_class"]), fmt.text)
        sheet.write_string(r, col_of["corrects_period"], line["corrects_period"] or "", fmt.text)
        sheet.write_string(r, col_of["project"], line["project"], fmt.text)
        sheet.write_string(r, col_of["project_class"], line["project_class"] or "", fmt.text)
        sheet.write_string(r, col_of["gpu_model"], line["gpu_model"], fmt.text)
        for name in ("rate_from", "rate_to"):
            sheet.write_datetime(r, col_of[name], datetime.combine(line[name], datetime.min.time()), fmt.date)
        sheet.write_number(r, col_of["gpu_hours"], float(line["gpu_hours"]), fmt.hours)
        sheet.write_number(r, col_of["list_rate_krw_per_gpu_hour"], float(line["list_rate_krw_per_gpu_hour"]), fmt.rate)
        discount = line["discount_percent"] / _HUNDRED
        sheet.write_number(r, col_of["discount_percent"], float(discount),
                           fmt.pct if discount == discount.quantize(Decimal("0.01")) else fmt.pct2)
        sheet.write_number(r, col_of["rate_krw_per_gpu_hour"], float(line["rate_krw_per_gpu_hour"]), fmt.rate)
        sheet.write_number(r, col_of["amount_krw"], int(line["amount_krw"]), fmt.won)
    last = first + max(lines.height, 1) - 1
    amount_col, charge_col = col_of["amount_krw"], col_of["charge_class"]
    amounts = f"{xl_rowcol_to_cell(first, amount_col, True, True)}:{xl_rowcol_to_cell(last, amount_col, True, True)}"
    charges = f"{xl_rowcol_to_cell(first, charge_col, True, True)}:{xl_rowcol_to_cell(last, charge_col, True, True)}"
    usage = sum((a for a, c in lines.select("amount_krw", "charge_class").iter_rows() if c == "usage"), Decimal(0))
    subtotal = sum(lines["amount_krw"].to_list(), Decimal(0))
    tax = vat(subtotal, header.vat_percent, header.rounding)

    row = last + 2
    label_col = amount_col - 1
    hours_col = col_of["gpu_hours"]
    sheet.merge_range(row, 0, row, hours_col - 1, "청구 GPU·시간 합계 Billed GPU-hours", fmt.total_label)
    sheet.write_number(row, hours_col, float(billed_gpu_hours), fmt.total_hours)
    sheet.merge_range(row, hours_col + 1, row, amount_col, "정확한 사용량(GPU·µs)을 한 번 반올림한 값 = 봉인 값 / "
                      "exact usage rounded once, as sealed", fmt.note)
    row += 1
    cells = {}
    for key, label, formula, value in (
        ("usage", "사용료 Usage", f'=SUMIF({charges},"{_CHARGE["usage"]}",{amounts})', usage),
        ("correction", "정정 Corrections", f'=SUMIF({charges},"{_CHARGE["correction"]}",{amounts})', subtotal - usage),
        ("subtotal", "공급가액 Subtotal", f"=SUM({amounts})", subtotal),
    ):
        sheet.write(row, label_col, label, fmt.total_label)
        sheet.write_formula(row, amount_col, formula, fmt.total_won, int(value))
        cells[key] = xl_rowcol_to_cell(row, amount_col)
        row += 1
    sheet.write(row, label_col, "부가세율 VAT rate (%)", fmt.total_label)
    sheet.write_number(row, amount_col, float(header.vat_percent), fmt.rate)
    vat_rate_cell = xl_rowcol_to_cell(row, amount_col)
    row += 1
    sheet.write(row, label_col, "부가세 VAT", fmt.total_label)
    sheet.write_formula(row, amount_col, vat_formula(cells["subtotal"], vat_rate_cell, header.rounding), fmt.total_won,
                        int(tax))
    cells["vat"] = xl_rowcol_to_cell(row, amount_col)
    row += 1
    sheet.write(row, label_col, "합계 Total (VAT 포함)", fmt.total_label)
    sheet.write_formula(row, amount_col, f"={cells['subtotal']}+{cells['vat']}", fmt.total_won, int(subtotal + tax))
    row += 2
    sheet.merge_range(row, 0, row, width - 1, "금액은 각 줄의 정확한 사용량 × 적용 단가를 한 번 원 단위로 처리한 값이며, 합계는 줄의 합입니다. "
                      "부가세는 청구 원장에 없고 명세서에서만 더합니다. / Each amount is the line's exact usage × rate, "
                      "rounded once to whole won; totals are sums of the lines. VAT is added on the statement only.",
                      fmt.note)
    sheet.set_row(row, 30)
    widths = (14, 11, 20, 11, 22, 11, 11, 16, 15, 8, 15, 16)
    for col, w in enumerate(widths):
        sheet.set_column(col, col, w)
    sheet.freeze_panes(first, 0)
    sheet.set_landscape()
    sheet.set_paper(9)  # A4
    sheet.fit_to_pages(1, 0)
    sheet.repeat_rows(first - 1)
    book.close()
    return buffer.getvalue()


@dataclass(frozen=True, slots=True)
class ProgrammeLine:
    entity: str
    display_name: str
    number: str
    billed_gpu_hours: Decimal
    usage_krw: Decimal
    correction_krw: Decimal
    vat_krw: Decimal


def programme_xlsx(
    period: str,
    manifest_sha256: str,
    lines: Sequence[ProgrammeLine],
    figures: Sequence[EntityFigures],
    billing: pl.DataFrame,
    *,
    rounding: RoundingRule,
    vat_percent: Decimal,
    simulated: bool,
) -> bytes:
    """The consolidated programme workbook: billing by entity, usage in the one vocabulary, all lines, terms."""
    buffer = io.BytesIO()
    book = _workbook(buffer, f"GPU 프로그램 월간 정산 {period}", period)
    fmt = _Formats(book)
    header = [
        ("기간 Period (KST)", _period_text(period)),
        ("봉인 Manifest SHA-256", manifest_sha256),
    ]

    sheet = book.add_worksheet("청구 Billing")
    heads = ("기관\nEntity", "코드\nCode", "명세서 번호\nStatement no.", "청구 GPU·시간\nBilled GPU-hours",
             "사용료 (원)\nUsage (KRW)", "정정 (원)\nCorrections (KRW)", "공급가액 (원)\nSubtotal (KRW)",
             "부가세 (원)\nVAT (KRW)", "합계 (원)\nTotal (KRW)")
    row = _header(sheet, fmt, "GPU 프로그램 월간 정산 · Programme billing", header, simulated, len(heads))
    sheet.write(row - 1, 0, "부가세율 VAT %", fmt.label)
    sheet.write_number(row - 1, 1, float(vat_percent), fmt.rate)
    vat_cell = xl_rowcol_to_cell(row - 1, 1, True, True)
    for col, heading in enumerate(heads):
        sheet.write(row, col, heading, fmt.head)
    sheet.set_row(row, 32)
    first = row + 1
    for r, line in enumerate(lines, start=first):
        sub = line.usage_krw + line.correction_krw
        sheet.write_string(r, 0, line.display_name, fmt.text)
        sheet.write_string(r, 1, line.entity, fmt.text)
        sheet.write_string(r, 2, line.number, fmt.text)
        sheet.write_number(r, 3, float(line.billed_gpu_hours), fmt.hours)
        sheet.write_number(r, 4, int(line.usage_krw), fmt.won)
        sheet.write_number(r, 5, int(line.correction_krw), fmt.won)
        sheet.write_formula(r, 6, f"={xl_rowcol_to_cell(r, 4)}+{xl_rowcol_to_cell(r, 5)}", fmt.won, int(sub))
        sheet.write_formula(r, 7, vat_formula(xl_rowcol_to_cell(r, 6), vat_cell, rounding), fmt.won, int(line.vat_krw))
        sheet.write_formula(r, 8, f"={xl_rowcol_to_cell(r, 6)}+{xl_rowcol_to_cell(r, 7)}", fmt.won,
                            int(sub + line.vat_krw))
    last = first + max(len(lines), 1) - 1
    total = last + 1
    sheet.merge_range(total, 0, total, 2, "합계 Total", fmt.total_label)
    # the programme's billed hours: all lines' exact usage rounded once (the manifest's billed_gpu_hours.ALL)
    sheet.write_number(total, 3, float(gpu_hours(int(billing["gpu_microseconds"].sum() or 0))), fmt.total_hours)
    sums = {
        4: sum((ln.usage_krw for ln in lines), Decimal(0)),
        5: sum((ln.correction_krw for ln in lines), Decimal(0)),
        6: sum((ln.usage_krw + ln.correction_krw for ln in lines), Decimal(0)),
        7: sum((ln.vat_krw for ln in lines), Decimal(0)),
        8: sum((ln.usage_krw + ln.correction_krw + ln.vat_krw for ln in lines), Decimal(0)),
    }
    for col, value in sums.items():
        span = f"{xl_rowcol_to_cell(first, col)}:{xl_rowcol_to_cell(last, col)}"
        sheet.write_formula(total, col, f"=SUM({span})", fmt.total_won, int(value))
    sheet.merge_range(total + 2, 0, total + 2, len(heads) - 1,
                      "부가세는 기관별 명세서마다 계산합니다 (합계 = 명세서 부가세의 합). / VAT is computed per entity "
                      "statement; the total is the sum of the statements' VAT.", fmt.note)
    for col, w in enumerate((30, 10, 26, 18, 16, 16, 16, 14, 16)):
        sheet.set_column(col, col, w)
    sheet.set_landscape()
    sheet.set_paper(9)
    sheet.fit_to_pages(1, 0)

    _usage_sheet(book, fmt, period, header, figures, simulated)
    _lines_sheet(book, fmt, billing, {ln.entity: ln.display_name for ln in lines})
    _terms_sheet(book, fmt)
    book.close()
    return buffer.getvalue()


def _usage_sheet(book, fmt: _Formats, period: str, header, figures: Sequence[EntityFigures], simulated: bool) -> None:
    sheet = book.add_worksheet("활용 Usage")
    heads = ("기관\nEntity", "할당 GPU\nAllocated GPUs", "할당 용량\nCapacity", "보고\nReported", "보고율\nCoverage",
             "가동\nBusy", "유휴\nIdle", "활용률\nUtilisation", "미보고\nUnreported", "귀속\nAttributed",
             "미귀속 (청구 제외)\nUnattributed (not billed)", "청구 GPU·시간\nBilled GPU-hours")
    row = _header(sheet, fmt, "GPU 활용 현황 · Usage (GPU-hours)", header[:2], simulated, len(heads))
    for col, heading in enumerate(heads):
        sheet.write(row, col, heading, fmt.head)
    sheet.set_row(row, 32)
    for r, f in enumerate(figures, start=row + 1):
        bold = f.entity == "ALL"
        sheet.write_string(r, 0, f.display_name or f.entity, fmt.total_label if bold else fmt.text)
        sheet.write_number(r, 1, f.allocated_gpus, fmt.int)
        for col, value in ((2, f.capacity_gpu_hours), (3, f.reported_gpu_hours), (5, f.busy_gpu_hours),
                           (6, f.idle_gpu_hours), (8, f.unreported_gpu_hours), (9, f.attributed_gpu_hours),
                           (10, f.unattributed_gpu_hours), (11, f.billed_gpu_hours)):
            sheet.write_number(r, col, float(value), fmt.hours1)
        for col, ratio in ((4, f.coverage), (7, f.utilisation)):
            if ratio is None:
                sheet.write_string(r, col, "–", fmt.text)
            else:
                sheet.write_number(r, col, float(ratio), fmt.pct1)
    for col, w in enumerate((30, 10, 14, 14, 9, 14, 14, 9, 14, 14, 18, 16)):
        sheet.set_column(col, col, w)
    sheet.set_landscape()
    sheet.set_paper(9)
    sheet.fit_to_pages(1, 0)


def _lines_sheet(book, fmt: _Formats, billing: pl.DataFrame, names: dict[str, str]) -> None:
    sheet = book.add_worksheet("줄 Lines")
    heads = [("entity", "기관\nEntity"), *LINE_HEADINGS]
    for col, (_, heading) in enumerate(heads):
        sheet.write(0, col, heading, fmt.head)
    sheet.set_row(0, 32)
    for r, line in enumerate(billing.iter_rows(named=True), start=1):
        for col, (name, _) in enumerate(heads):
            value = line[name]
            if name == "entity":
                sheet.write_string(r, col, names.get(value, value), fmt.text)
            elif name in ("rate_from", "rate_to"):
                sheet.write_datetime(r, col, datetime.combine(value, datetime.min.time()), fmt.date)
            elif name == "amount_krw":
                sheet.write_number(r, col, int(value), fmt.won)
            elif name == "gpu_hours":
                sheet.write_number(r, col, float(value), fmt.hours)
            elif name == "discount_percent":
                sheet.write_number(r, col, float(value / _HUNDRED), fmt.pct2)
            elif isinstance(value, Decimal):
                sheet.write_number(r, col, float(value), fmt.rate)
            else:
                sheet.write_string(r, col, _CHARGE.get(value, value) if name == "charge_class" else (value or ""),
                                   fmt.text)
    sheet.autofilter(0, 0, max(billing.height, 1), len(heads) - 1)
    sheet.freeze_panes(1, 0)
    for col, w in enumerate((28, 14, 11, 20, 11, 22, 11, 11, 16, 15, 8, 15, 16)):
        sheet.set_column(col, col, w)


def _terms_sheet(book, fmt: _Formats) -> None:
    sheet = book.add_worksheet("용어 Terms")
    for col, heading in enumerate(("용어", "Term", "정의 Definition")):
        sheet.write(0, col, heading, fmt.head)
    for r, (_, korean, english, definition) in enumerate(TERMS, start=1):
        sheet.write_string(r, 0, korean, fmt.text)
        sheet.write_string(r, 1, english, fmt.text)
        sheet.write_string(r, 2, definition, fmt.text)
    sheet.set_column(0, 0, 20)
    sheet.set_column(1, 1, 26)
    sheet.set_column(2, 2, 90)
