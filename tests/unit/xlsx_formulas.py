"""Read a gpuledger workbook as a person's spreadsheet would: cells, and the formulas it writes.

:func:`evaluate` recomputes the small formula language the statements use (``SUM``,
``SUMIF``, ``ROUNDDOWN``, ``ROUND``, ``+``, ``*``, ``/``) from the *cells*, with exact
decimals, so a test sees what Excel would compute, not the cached value the writer stored.
"""

from __future__ import annotations

import re
from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal

from openpyxl.utils.cell import coordinate_from_string, range_boundaries

_RANGE = r"\$?[A-Z]+\$?\d+:\$?[A-Z]+\$?\d+"


def _cells(sheet, ref: str) -> list:
    min_col, min_row, max_col, max_row = range_boundaries(ref.replace("$", ""))
    return [sheet.cell(r, c).value for r in range(min_row, max_row + 1) for c in range(min_col, max_col + 1)]


def _number(sheet, value) -> Decimal:
    if isinstance(value, str) and value.startswith("="):
        return evaluate(sheet, value)
    return Decimal(str(value or 0))


def evaluate(sheet, formula: str) -> Decimal:
    """The exact value of ``formula`` over ``sheet``'s cells (raises on anything unknown)."""
    expr = formula.lstrip("=")
    expr = re.sub(
        rf'SUMIF\(({_RANGE}),"([^"]*)",({_RANGE})\)',
        lambda m: str(sum((_number(sheet, v) for k, v in zip(_cells(sheet, m[1]), _cells(sheet, m[3]), strict=True)
                           if k == m[2]), Decimal(0))),
        expr,
    )
    expr = re.sub(rf"SUM\(({_RANGE})\)", lambda m: str(sum((_number(sheet, v) for v in _cells(sheet, m[1])), Decimal(0))), expr)

    def cell(m: re.Match) -> str:
        column, row = coordinate_from_string(m[0].replace("$", ""))
        return f'D("{_number(sheet, sheet[f"{column}{row}"].value)}")'

    expr = re.sub(r"\$?\b[A-Z]{1,3}\$?\d+\b", cell, expr)
    if re.search(r"[A-Z]{2,}", expr.replace("ROUNDDOWN", "").replace("ROUND", "")):
        raise ValueError(f"formula outside the statements' language: {formula}")
    return eval(  # noqa: S307 - our own formula, reduced to decimals and two functions
        expr,
        {
            "D": Decimal,
            "ROUNDDOWN": lambda x, n: x.quantize(Decimal(1), rounding=ROUND_DOWN),
            "ROUND": lambda x, n: x.quantize(Decimal(1), rounding=ROUND_HALF_UP),
        },
    )


def find_row(sheet, label_start: str) -> int:
    """The row whose first non-empty text cell starts with ``label_start``."""
    for row in sheet.iter_rows():
        for c in row:
            if isinstance(c.value, str) and not c.value.startswith("="):
                if c.value.startswith(label_start):
                    return c.row
                break
    raise AssertionError(f"no row labelled {label_start!r}")


def formula_right_of(sheet, label_start: str) -> str:
    """The last formula in the row labelled ``label_start``."""
    row = find_row(sheet, label_start)
    formulas = [c.value for c in sheet[row] if isinstance(c.value, str) and c.value.startswith("=")]
    assert formulas, f"row {row} ({label_start}) holds no formula"
    return formulas[-1]
