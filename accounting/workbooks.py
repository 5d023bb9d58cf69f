"""Finance workbooks (XLSX): a statement per entity (and per sub-account) and the programme workbook.

A statement workbook is the :class:`~accounting.statements.Statement` laid out for Excel: the
parties block, lines with Korean and English headings, and totals written as **Excel formulas**
over the lines, each with its cached value equal to the ledger to the last won::

    사용료 Usage        =SUMIF(charge column, "usage", amounts)
    정정 Corrections    =SUMIF(charge column, "correction", amounts)
    공급가액 Subtotal   =SUM(amounts)                         = Σ ledger amount_krw
    부가세 VAT          rule(subtotal × vat_percent / 100)    registry [billing] vat_percent
    합계 Total          =subtotal + VAT

(a sub-account's VAT is its apportioned share, written as a value). Invariants: amounts are
whole won stored as integers (exact in Excel up to 2^53); each formula's cached value is
computed with :class:`~decimal.Decimal` by the same rule the formula states, so a reader that
does not recalculate and one that does show the same number. GPU-hours are written at the one
precision of :mod:`accounting.figures` (2 places, each rounded once from the exact
GPU-microseconds). Workbooks are deterministic (fixed creation date): a re-export gives the
same content.
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

from accounting.figures import TERMS, EntityFigures, shown_billed_hours, shown_hours
from accounting.registry import Party, RoundingRule
from accounting.statements import CHARGE_LABELS, ROUNDING_WORDS, Statement, _period_text

_HUNDRED = Decimal(100)
_CHARGE = CHARGE_LABELS
MISSING = "등록부에 없음 / not in the registry"
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
        self.hours = book.add_format({**base, "border": 1, "num_format": "#,##0.00"})
        self.hours1 = self.hours
        self.rate = book.add_format({**base, "border": 1, "num_format": "#,##0.00"})
        self.pct = book.add_format({**base, "border": 1, "num_format": "0%"})
        self.pct2 = book.add_format({**base, "border": 1, "num_format": "0.00%"})
        self.pct1 = book.add_format({**base, "border": 1, "num_format": "0.0%"})
        self.won = book.add_format({**base, "border": 1, "num_format": "#,##0"})
        self.int = book.add_format({**base, "border": 1, "num_format": "#,##0"})
        self.total_label = book.add_format({**base, "bold": True, "border": 1, "bg_color": "#EDF2F7"})
        self.total_won = book.add_format({**base, "bold": True, "border": 1, "num_format": "#,##0", "bg_color": "#EDF2F7"})
        self.total_hours = book.add_format({**base, "bold": True, "border": 1, "num_format": "#,##0.00",
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


def statement_xlsx(statement: Statement) -> bytes:
    """The statement as a workbook: parties, lines, formula totals, and its sub-accounts' sheet."""
    buffer = io.BytesIO()
    book = _workbook(buffer, f"GPU 사용료 명세서 {statement.period} {statement.recipient_name}", statement.period)
    fmt = _Formats(book)
    sheet = book.add_worksheet("명세서 Statement")
    row = _header(sheet, fmt, "거래명세서 (청구서) · GPU usage statement", _statement_facts(statement),
                  statement.simulated, len(LINE_HEADINGS))
    first, last = _write_lines(sheet, fmt, row, statement)
    row = _write_totals(sheet, fmt, statement, first, last)
    sheet.merge_range(row, 0, row, len(LINE_HEADINGS) - 1, statement.rounding_note, fmt.note)
    sheet.set_row(row, 30)
    for col, w in enumerate((14, 11, 20, 11, 22, 11, 11, 16, 15, 8, 15, 16)):
        sheet.set_column(col, col, w)
    sheet.freeze_panes(first, 0)
    _print_setup(sheet)
    sheet.repeat_rows(first - 1)
    if statement.sub_accounts:
        _sub_accounts_sheet(book, fmt, statement)
    book.close()
    return buffer.getvalue()


def _party_text(party: Party) -> str:
    return " · ".join(
        f"{label} {value or MISSING}"
        for label, value in (("등록번호", party.business_number), ("주소", party.address), ("대표자", party.representative))
    )


def _statement_facts(s: Statement) -> list[tuple[str, str]]:
    supplier = s.supplier.party if s.supplier is not None else Party()
    facts = [
        ("공급자 Supplier", f"{supplier.name or MISSING} · {_party_text(supplier)}"),
        ("공급받는자 Bill to", f"{s.recipient_name} ({s.entity}{'/' + s.project if s.project else ''}) · "
                           f"{_party_text(s.recipient)}"),
        ("기간 Period (KST)", s.period_text),
        ("명세서 번호 Statement no.", s.number),
    ]
    if s.parent_number:
        facts.append(("상위 명세서 Parent statement", s.parent_number))
    account = s.supplier.payment_account if s.supplier is not None else None
    facts += [
        ("작성일 / 지급 기한 Issue / due", f"{s.issue_date:%Y-%m-%d} / {s.due_date:%Y-%m-%d}"),
        ("입금 계좌 Payment account", account or MISSING),
        ("봉인 Manifest SHA-256", s.manifest_sha256),
        ("통화 Currency", f"KRW · 줄마다 원 단위 {ROUNDING_WORDS[s.rounding.value]} · VAT {s.vat_percent}%"),
    ]
    return facts


def _write_lines(sheet, fmt: _Formats, row: int, s: Statement) -> tuple[int, int]:
    """Headings at ``row``, one row per line below; returns the first and last line rows."""
    for col, (_, heading) in enumerate(LINE_HEADINGS):
        sheet.write(row, col, heading, fmt.head)
    sheet.set_row(row, 32)
    first = row + 1
    for r, line in enumerate(s.lines, start=first):
        values = (
            CHARGE_LABELS.get(line.charge_class, line.charge_class), line.corrects_period or "", line.project,
            line.project_class or "", line.gpu_model,
        )
        for col, text in enumerate(values):
            sheet.write_string(r, col, text, fmt.text)
        sheet.write_datetime(r, 5, datetime.combine(line.rate_from, datetime.min.time()), fmt.date)
        sheet.write_datetime(r, 6, datetime.combine(line.rate_to, datetime.min.time()), fmt.date)
        sheet.write_number(r, 7, float(line.hours_shown), fmt.hours)
        sheet.write_number(r, 8, float(line.list_rate), fmt.rate)
        discount = line.discount_percent / _HUNDRED
        sheet.write_number(r, 9, float(discount), fmt.pct if discount == discount.quantize(Decimal("0.01")) else fmt.pct2)
        sheet.write_number(r, 10, float(line.rate), fmt.rate)
        sheet.write_number(r, 11, int(line.amount_krw), fmt.won)
    return first, first + max(len(s.lines), 1) - 1


_AMOUNT_COL, _CHARGE_COL, _HOURS_COL = 11, 0, 7


def _write_totals(sheet, fmt: _Formats, s: Statement, first: int, last: int) -> int:
    """Billed hours, then usage / corrections / subtotal / VAT / total as formulas; returns the next row."""
    cell = xl_rowcol_to_cell
    amounts = f"{cell(first, _AMOUNT_COL, True, True)}:{cell(last, _AMOUNT_COL, True, True)}"
    charges = f"{cell(first, _CHARGE_COL, True, True)}:{cell(last, _CHARGE_COL, True, True)}"
    row, label_col = last + 2, _AMOUNT_COL - 1
    sheet.merge_range(row, 0, row, _HOURS_COL - 1, "청구 GPU·시간 합계 Billed GPU-hours", fmt.total_label)
    sheet.write_number(row, _HOURS_COL, float(s.billed_hours_shown), fmt.total_hours)
    sheet.merge_range(row, _HOURS_COL + 1, row, _AMOUNT_COL, "정확한 사용량(GPU·µs)의 합을 한 번 반올림 (소수 둘째 자리) / "
                      "exact usage summed, rounded once (2 places)", fmt.note)
    row += 1
    cells = {}
    for key, label, formula, value in (
        ("usage", "사용료 Usage", f'=SUMIF({charges},"{_CHARGE["usage"]}",{amounts})', s.usage_krw),
        ("correction", "정정 Corrections", f'=SUMIF({charges},"{_CHARGE["correction"]}",{amounts})', s.correction_krw),
        ("subtotal", "공급가액 Subtotal", f"=SUM({amounts})", s.subtotal_krw),
    ):
        sheet.write(row, label_col, label, fmt.total_label)
        sheet.write_formula(row, _AMOUNT_COL, formula, fmt.total_won, int(value))
        cells[key] = cell(row, _AMOUNT_COL)
        row += 1
    sheet.write(row, label_col, "부가세율 VAT rate (%)", fmt.total_label)
    sheet.write_number(row, _AMOUNT_COL, float(s.vat_percent), fmt.rate)
    vat_rate_cell = cell(row, _AMOUNT_COL)
    row += 1
    sheet.write(row, label_col, "부가세 VAT", fmt.total_label)
    if s.project is None:
        sheet.write_formula(row, _AMOUNT_COL, vat_formula(cells["subtotal"], vat_rate_cell, s.rounding), fmt.total_won,
                            int(s.vat_krw))
    else:  # a sub-account's share of its entity's VAT (largest remainder): a value, not this sheet's formula
        sheet.write_number(row, _AMOUNT_COL, int(s.vat_krw), fmt.total_won)
    cells["vat"] = cell(row, _AMOUNT_COL)
    row += 1
    sheet.write(row, label_col, "합계 Total (VAT 포함)", fmt.total_label)
    sheet.write_formula(row, _AMOUNT_COL, f"={cells['subtotal']}+{cells['vat']}", fmt.total_won, int(s.total_krw))
    return row + 2


def _sub_accounts_sheet(book, fmt: _Formats, s: Statement) -> None:
    """The entity's projects as sub-accounts; the sum row's formulas equal the statement's totals."""
    sheet = book.add_worksheet("세부 계정 Sub-accounts")
    heads = ("프로젝트\nProject", "공급받는자\nRecipient", "명세서 번호\nStatement no.", "GPU·시간\nGPU-hours",
             "공급가액 (원)\nSubtotal", "부가세 (원)\nVAT share", "합계 (원)\nTotal")
    for col, heading in enumerate(heads):
        sheet.write(0, col, heading, fmt.head)
    sheet.set_row(0, 32)
    for r, sub in enumerate(s.sub_accounts, start=1):
        for col, text in enumerate((sub.project, sub.recipient_name, sub.number)):
            sheet.write_string(r, col, text, fmt.text)
        sheet.write_number(r, 3, float(sub.billed_hours_shown), fmt.hours)
        sheet.write_number(r, 4, int(sub.subtotal_krw), fmt.won)
        sheet.write_number(r, 5, int(sub.vat_krw), fmt.won)
        sheet.write_formula(r, 6, f"={xl_rowcol_to_cell(r, 4)}+{xl_rowcol_to_cell(r, 5)}", fmt.won, int(sub.total_krw))
    total = len(s.sub_accounts) + 1
    sheet.merge_range(total, 0, total, 2, "합계 Total (= 명세서)", fmt.total_label)
    sheet.write_number(total, 3, float(s.billed_hours_shown), fmt.total_hours)
    for col, value in ((4, s.subtotal_krw), (5, s.vat_krw), (6, s.total_krw)):
        span = f"{xl_rowcol_to_cell(1, col)}:{xl_rowcol_to_cell(total - 1, col)}"
        sheet.write_formula(total, col, f"=SUM({span})", fmt.total_won, int(value))
    sheet.merge_range(total + 2, 0, total + 2, len(heads) - 1, "공급가액은 각 프로젝트 줄의 합, 부가세는 명세서의 부가세를 공급가액 "
                      "비율로 나눈 몫 (최대 잔여 방식): 합계가 명세서와 원 단위까지 같습니다. / Subtotals are sums of each "
                      "project's lines; VAT shares split the statement's VAT by subtotal (largest remainder).", fmt.note)
    for col, w in enumerate((22, 30, 40, 14, 16, 14, 16)):
        sheet.set_column(col, col, w)
    _print_setup(sheet)


def _print_setup(sheet) -> None:
    sheet.set_landscape()
    sheet.set_paper(9)  # A4
    sheet.fit_to_pages(1, 0)


@dataclass(frozen=True, slots=True)
class ProgrammeLine:
    entity: str
    display_name: str
    number: str
    billed_gpu_microseconds: int
    usage_krw: Decimal
    correction_krw: Decimal
    vat_krw: Decimal

    @property
    def billed_hours_shown(self) -> Decimal:
        return shown_billed_hours(self.billed_gpu_microseconds)


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
    header = [("기간 Period (KST)", _period_text(period)), ("봉인 Manifest SHA-256", manifest_sha256)]
    total_us = int(billing["gpu_microseconds"].sum() or 0)
    _billing_sheet(book, fmt, header, lines, total_us, rounding=rounding, vat_percent=vat_percent, simulated=simulated)
    _usage_sheet(book, fmt, period, header, figures, simulated)
    _lines_sheet(book, fmt, billing, {ln.entity: ln.display_name for ln in lines})
    _terms_sheet(book, fmt)
    book.close()
    return buffer.getvalue()


_PROGRAMME_HEADS = ("기관\nEntity", "코드\nCode", "명세서 번호\nStatement no.", "청구 GPU·시간\nBilled GPU-hours",
                    "사용료 (원)\nUsage (KRW)", "정정 (원)\nCorrections (KRW)", "공급가액 (원)\nSubtotal (KRW)",
                    "부가세 (원)\nVAT (KRW)", "합계 (원)\nTotal (KRW)")


def _billing_sheet(book, fmt: _Formats, header, lines: Sequence[ProgrammeLine], total_us: int, *,
                   rounding: RoundingRule, vat_percent: Decimal, simulated: bool) -> None:
    """One row per entity statement, VAT per statement as a formula, sums of the rows as the total."""
    sheet = book.add_worksheet("청구 Billing")
    heads = _PROGRAMME_HEADS
    row = _header(sheet, fmt, "GPU 프로그램 월간 정산 · Programme billing", header, simulated, len(heads))
    sheet.write(row - 1, 0, "부가세율 VAT %", fmt.label)
    sheet.write_number(row - 1, 1, float(vat_percent), fmt.rate)
    vat_cell = xl_rowcol_to_cell(row - 1, 1, True, True)
    for col, heading in enumerate(heads):
        sheet.write(row, col, heading, fmt.head)
    sheet.set_row(row, 32)
    first = row + 1
    cell = xl_rowcol_to_cell
    for r, line in enumerate(lines, start=first):
        sub = line.usage_krw + line.correction_krw
        for col, text in enumerate((line.display_name, line.entity, line.number)):
            sheet.write_string(r, col, text, fmt.text)
        sheet.write_number(r, 3, float(line.billed_hours_shown), fmt.hours)
        sheet.write_number(r, 4, int(line.usage_krw), fmt.won)
        sheet.write_number(r, 5, int(line.correction_krw), fmt.won)
        sheet.write_formula(r, 6, f"={cell(r, 4)}+{cell(r, 5)}", fmt.won, int(sub))
        sheet.write_formula(r, 7, vat_formula(cell(r, 6), vat_cell, rounding), fmt.won, int(line.vat_krw))
        sheet.write_formula(r, 8, f"={cell(r, 6)}+{cell(r, 7)}", fmt.won, int(sub + line.vat_krw))
    last = first + max(len(lines), 1) - 1
    total = last + 1
    sheet.merge_range(total, 0, total, 2, "합계 Total", fmt.total_label)
    # the programme's billed hours: all lines' exact usage rounded once (never a sum of rounded rows)
    sheet.write_number(total, 3, float(shown_billed_hours(total_us)), fmt.total_hours)
    sums = {
        4: sum((ln.usage_krw for ln in lines), Decimal(0)),
        5: sum((ln.correction_krw for ln in lines), Decimal(0)),
        6: sum((ln.usage_krw + ln.correction_krw for ln in lines), Decimal(0)),
        7: sum((ln.vat_krw for ln in lines), Decimal(0)),
        8: sum((ln.usage_krw + ln.correction_krw + ln.vat_krw for ln in lines), Decimal(0)),
    }
    for col, value in sums.items():
        sheet.write_formula(total, col, f"=SUM({cell(first, col)}:{cell(last, col)})", fmt.total_won, int(value))
    sheet.merge_range(total + 2, 0, total + 2, len(heads) - 1,
                      "부가세는 기관별 명세서마다 계산합니다 (합계 = 명세서 부가세의 합). / VAT is computed per entity "
                      "statement; the total is the sum of the statements' VAT.", fmt.note)
    for col, w in enumerate((30, 10, 26, 18, 16, 16, 16, 14, 16)):
        sheet.set_column(col, col, w)
    _print_setup(sheet)


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
                           (10, f.unattributed_gpu_hours)):
            sheet.write_number(r, col, float(shown_hours(value)), fmt.hours)
        sheet.write_number(r, 11, float(f.billed_hours_shown), fmt.hours)
        for col, ratio in ((4, f.coverage), (7, f.utilisation)):
            if ratio is None:
                sheet.write_string(r, col, "–", fmt.text)
            else:
                sheet.write_number(r, col, float(ratio), fmt.pct1)
    for col, w in enumerate((30, 10, 14, 14, 9, 14, 14, 9, 14, 14, 18, 16)):
        sheet.set_column(col, col, w)
    _print_setup(sheet)


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
                sheet.write_number(r, col, float(shown_billed_hours(int(line["gpu_microseconds"]))), fmt.hours)
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
