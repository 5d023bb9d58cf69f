"""A statement as a PDF a Korean finance office can send (거래명세서 / 청구서), one A4 page or more.

Laid out as the office expects it: the statement number, issue and due dates; the supplier
(공급자) and the recipient (공급받는자) side by side, each with its 상호, 사업자등록번호, address
and representative; the billing lines; 공급가액, 부가세 and 합계; the payment account; for an
entity with sub-accounts, their table; the seal's SHA-256 at the foot of every page. Figures
come from :class:`accounting.statements.Statement`, at the one precision of
:mod:`accounting.figures` (whole won, GPU-hours to 2 places), so the PDF, the XLSX, the CSVs,
the report and the CLI show the same numbers.

Korean is drawn with NanumGothic (SIL Open Font License 1.1) from the ``koreanize-matplotlib``
wheel, a dependency already, embedded as a subset: no system font, no network. fpdf2 writes the
PDF (pure Python, on PyPI). The creation date is the issue date, so a re-export gives the same
bytes. A missing party field prints as "등록부에 없음 / not in the registry", never as blank.
"""

from __future__ import annotations

import importlib.util
import logging
from datetime import datetime, time
from pathlib import Path

from accounting.errors import AccountingError
from accounting.figures import hours_text, won_text
from accounting.registry import Party
from accounting.statements import CHARGE_LABELS, Statement

FONT = "NanumGothic"
MISSING = "등록부에 없음 / not in the registry"
_BLUE = (43, 108, 176)
_GREY = (237, 242, 247)
_RED = (197, 48, 48)


class StatementPdfError(AccountingError):
    """The statement PDF cannot be drawn (no Korean font to embed)."""


def font_files() -> tuple[Path, Path]:
    """NanumGothic regular and bold from the koreanize-matplotlib wheel (located, not imported)."""
    spec = importlib.util.find_spec("koreanize_matplotlib")
    if spec is not None and spec.submodule_search_locations:
        fonts = Path(next(iter(spec.submodule_search_locations))) / "fonts"
        regular, bold = fonts / "NanumGothic.ttf", fonts / "NanumGothicBold.ttf"
        if regular.is_file() and bold.is_file():
            return regular, bold
    raise StatementPdfError("NanumGothic not found: install koreanize-matplotlib (a gpuledger server dependency)")


def statement_pdf(statement: Statement) -> bytes:
    """The statement's PDF bytes (deterministic for the same statement)."""
    regular, bold = font_files()
    footer = f"봉인 Manifest SHA-256 {statement.manifest_sha256} · {statement.number}"
    pdf = _document_class()(footer, statement.simulated)
    pdf.set_creation_date(datetime.combine(statement.issue_date, time()).astimezone())
    pdf.set_title(f"거래명세서 {statement.number}")
    pdf.set_author("gpuledger")
    pdf.add_font(FONT, "", str(regular))
    pdf.add_font(FONT, "B", str(bold))
    pdf.set_auto_page_break(auto=True, margin=16)
    pdf.add_page()
    _title(pdf, statement)
    _parties(pdf, statement)
    _lines(pdf, statement)
    _totals(pdf, statement)
    _payment(pdf, statement)
    if statement.sub_accounts:
        _sub_accounts(pdf, statement)
    logger = logging.getLogger("fontTools.subset")
    level = logger.level
    logger.setLevel(logging.ERROR)  # "TSI0 NOT subset; dropped": hinting sources a PDF does not need
    try:
        return bytes(pdf.output())
    finally:
        logger.setLevel(level)


def _title(pdf, s: Statement) -> None:
    pdf.set_font(FONT, "B", 16)
    title = "거래명세서 (청구서)" if s.project is None else "거래명세서 (청구서) · 세부 계정 sub-account"
    pdf.cell(0, 10, title, new_x="LMARGIN", new_y="NEXT")
    pdf.set_font(FONT, "", 10)
    pdf.cell(0, 5, "Statement of GPU usage / invoice · GPU 사용료", new_x="LMARGIN", new_y="NEXT")
    if s.simulated:
        pdf.set_text_color(*_RED)
        pdf.set_font(FONT, "B", 11)
        pdf.cell(0, 8, "모의 데이터 — SIMULATED DATA (gpuledger demo): 실제 청구서가 아닙니다 / not an invoice",
                 border=1, new_x="LMARGIN", new_y="NEXT")
        pdf.set_text_color(0, 0, 0)
    pdf.ln(2)
    facts = [
        ("명세서 번호 No.", s.number),
        ("작성일 Issue date", f"{s.issue_date:%Y-%m-%d}"),
        ("지급 기한 Due date", f"{s.due_date:%Y-%m-%d}"),
        ("기간 Period (KST)", s.period_text),
    ]
    if s.parent_number:
        facts.append(("상위 명세서 Parent statement", s.parent_number))
    _label_rows(pdf, facts, label_width=48)
    pdf.ln(3)


def _label_rows(pdf, rows, *, label_width: float, width: float | None = None) -> None:
    x = pdf.get_x()
    total = width if width is not None else pdf.epw
    for label, value in rows:
        pdf.set_x(x)
        pdf.set_fill_color(*_GREY)
        pdf.set_font(FONT, "B", 9)
        pdf.cell(label_width, 5.5, label, border=1, fill=True)
        pdf.set_font(FONT, "", 9)
        pdf.multi_cell(total - label_width, 5.5, value or MISSING, border=1, new_x="LMARGIN", new_y="NEXT")


def _party_rows(party: Party, name_fallback: str) -> list[tuple[str, str | None]]:
    return [
        ("상호 Name", party.name or name_fallback),
        ("등록번호 Reg. no.", party.business_number),
        ("주소 Address", party.address),
        ("대표자 Representative", party.representative),
    ]


def _parties(pdf, s: Statement) -> None:
    half = (pdf.epw - 4) / 2
    top = pdf.get_y()
    supplier = s.supplier.party if s.supplier is not None else Party()
    for column, (heading, party, fallback) in enumerate(
        (("공급자 Supplier", supplier, ""), ("공급받는자 Recipient", s.recipient, s.recipient_name))
    ):
        pdf.set_xy(pdf.l_margin + column * (half + 4), top)
        pdf.set_font(FONT, "B", 10)
        pdf.set_fill_color(*_BLUE)
        pdf.set_text_color(255, 255, 255)
        pdf.cell(half, 7, heading, border=1, fill=True, new_x="LEFT", new_y="NEXT")
        pdf.set_text_color(0, 0, 0)
        _label_rows(pdf, _party_rows(party, fallback), label_width=40, width=half)
        if column == 0:
            bottom = pdf.get_y()
    pdf.set_y(max(bottom, pdf.get_y()) + 4)


_LINE_COLUMNS = (  # heading, width mm, align
    ("구분 Charge", 24, "L"),
    ("정정 대상 Corrects", 22, "C"),
    ("프로젝트 Project", 34, "L"),
    ("GPU 모델 Model", 40, "L"),
    ("적용 기간 Rate dates", 36, "C"),
    ("GPU·시간 GPU-hours", 28, "R"),
    ("정가 List (원/h)", 24, "R"),
    ("할인 Disc.", 15, "R"),
    ("단가 Rate (원/h)", 24, "R"),
    ("금액 Amount (원)", 27, "R"),
)


def _lines(pdf, s: Statement) -> None:
    pdf.set_font(FONT, "", 8)
    with pdf.table(
        col_widths=tuple(w for _, w, _ in _LINE_COLUMNS),
        text_align=tuple(a for _, _, a in _LINE_COLUMNS),
        headings_style=_headings(pdf),
        line_height=5.5,
        width=sum(w for _, w, _ in _LINE_COLUMNS),
        align="LEFT",
        repeat_headings=1,
    ) as table:
        head = table.row()
        for heading, _, _ in _LINE_COLUMNS:
            head.cell(heading)
        for line in s.lines:
            row = table.row()
            for text in (
                CHARGE_LABELS.get(line.charge_class, line.charge_class),
                line.corrects_period or "",
                line.project,
                line.gpu_model,
                f"{line.rate_from:%Y-%m-%d} – {line.rate_to:%m-%d}",
                hours_text(line.hours_shown),
                f"{line.list_rate:,.2f}",
                f"{line.discount_percent.normalize():f}%",
                f"{line.rate:,.2f}",
                won_text(line.amount_krw),
            ):
                row.cell(text)
    pdf.ln(2)


def _headings(pdf):
    from fpdf.fonts import FontFace

    return FontFace(family=FONT, emphasis="BOLD", color=(255, 255, 255), fill_color=_BLUE, size_pt=8)


def _totals(pdf, s: Statement) -> None:
    rows = [
        ("청구 GPU·시간 Billed GPU-hours", hours_text(s.billed_hours_shown)),
        ("사용료 Usage (원)", won_text(s.usage_krw)),
        ("정정 Corrections (원)", won_text(s.correction_krw)),
        ("공급가액 Subtotal (원)", won_text(s.subtotal_krw)),
        (f"부가세 VAT {s.vat_percent.normalize():f}%{' 몫 share' if s.project else ''} (원)", won_text(s.vat_krw)),
        ("합계 Total incl. VAT (원)", won_text(s.total_krw)),
    ]
    if pdf.will_page_break(6 * len(rows) + 12):  # the totals stay together on one page
        pdf.add_page()
    x = pdf.l_margin + pdf.epw - 120
    for i, (label, value) in enumerate(rows):
        pdf.set_x(x)
        last = i == len(rows) - 1
        pdf.set_font(FONT, "B", 11 if last else 9)
        pdf.set_fill_color(*_GREY)
        pdf.cell(75, 7 if last else 6, label, border=1, fill=True)
        pdf.cell(45, 7 if last else 6, value, border=1, align="R", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font(FONT, "", 7.5)
    pdf.multi_cell(0, 4.5, s.rounding_note, new_x="LMARGIN", new_y="NEXT")
    pdf.ln(1)


_SUB_COLUMNS = (
    ("프로젝트 Project", 46, "L"),
    ("공급받는자 Recipient", 58, "L"),
    ("명세서 번호 No.", 68, "L"),
    ("GPU·시간", 24, "R"),
    ("공급가액 (원)", 28, "R"),
    ("부가세 (원)", 24, "R"),
    ("합계 (원)", 28, "R"),
)


def _sub_accounts(pdf, s: Statement) -> None:
    pdf.set_font(FONT, "B", 10)
    pdf.cell(0, 7, "세부 계정 (프로젝트별) · Sub-accounts by project — 합계는 이 명세서와 원 단위까지 같습니다",
             new_x="LMARGIN", new_y="NEXT")
    pdf.set_font(FONT, "", 8)
    with pdf.table(col_widths=tuple(w for _, w, _ in _SUB_COLUMNS), text_align=tuple(a for _, _, a in _SUB_COLUMNS),
                   headings_style=_headings(pdf), line_height=5.5, width=sum(w for _, w, _ in _SUB_COLUMNS),
                   align="LEFT") as table:
        head = table.row()
        for heading, _, _ in _SUB_COLUMNS:
            head.cell(heading)
        for sub in s.sub_accounts:
            row = table.row()
            for text in (sub.project, sub.recipient_name, sub.number, hours_text(sub.billed_hours_shown),
                         won_text(sub.subtotal_krw), won_text(sub.vat_krw), won_text(sub.total_krw)):
                row.cell(text)
        row = table.row()
        for text in ("합계 Total", "", "", hours_text(s.billed_hours_shown), won_text(s.subtotal_krw),
                     won_text(s.vat_krw), won_text(s.total_krw)):
            row.cell(text)
    pdf.set_font(FONT, "", 7.5)
    pdf.multi_cell(0, 4.5, "부가세는 이 명세서의 부가세를 공급가액 비율로 나눈 몫입니다 (원 단위, 최대 잔여 방식: 몫의 합 = "
                   "명세서의 부가세). / Each VAT share is this statement's VAT split by subtotal (whole won, largest "
                   "remainder: the shares sum to this statement's VAT).", new_x="LMARGIN", new_y="NEXT")
    pdf.ln(2)


def _payment(pdf, s: Statement) -> None:
    account = s.supplier.payment_account if s.supplier is not None else None
    _label_rows(pdf, [("입금 계좌 Payment account", account), ("지급 기한 Due date", f"{s.due_date:%Y-%m-%d}")],
                label_width=55)
    pdf.ln(3)


def _document_class():
    """An A4-landscape FPDF whose every page ends with the seal, the number and n/N (fpdf2 imported here)."""
    from fpdf import FPDF

    class _Statement(FPDF):
        def __init__(self, foot: str, simulated: bool) -> None:
            super().__init__(orientation="L", unit="mm", format="A4")
            self._foot = ("모의 데이터 SIMULATED · " if simulated else "") + foot

        def footer(self) -> None:
            self.set_y(-12)
            self.set_font(FONT, "", 7)
            self.set_text_color(90, 90, 90)
            self.cell(0, 5, f"{self._foot} · {self.page_no()}/{{nb}}", align="C")
            self.set_text_color(0, 0, 0)

    return _Statement
