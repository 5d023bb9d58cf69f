"""Finance and auditor packs: totals equal the ledger, and the README's SQL re-derives them."""

from __future__ import annotations

import csv
import hashlib
import re
from decimal import Decimal
from pathlib import Path

import duckdb
import openpyxl
import polars as pl
import pyarrow.parquet as pq
import pytest

from accounting.errors import RegistryError
from accounting.export import ExportError, export_month
from accounting.registry import loads_registry
from accounting.schemas import BILLING
from storage.dataset import Store, to_table
from storage.errors import IntegrityError
from storage.manifest import generate_keypair, seal_period
from tests.unit.audit_month_fixture import HOUR_US, PERIOD, billing_frame, build_month
from tests.unit.xlsx_formulas import evaluate, find_row, formula_right_of

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def _blocks(readme: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", readme, flags=re.S)


def test_finance_pack_totals_equal_the_ledger(tmp_path: Path) -> None:
    # given the hand-worked month of audit_month_fixture, closed and sealed
    store = build_month(tmp_path / "data")
    # when it is exported
    result = export_month(store, PERIOD, tmp_path / "out")
    pack = tmp_path / "out" / PERIOD
    # then the summary says gov 9,001 KRW (7,001 usage + 2,000 correction) and samsung 925 KRW
    with (pack / "finance" / "summary.csv").open() as handle:
        summary = {row["entity"]: row for row in csv.DictReader(handle)}
    assert summary["gov"]["usage_krw"] == "7001"
    assert summary["gov"]["correction_krw"] == "2000"
    assert summary["gov"]["total_krw"] == "9001"
    assert summary["samsung"]["total_krw"] == "925"
    # and each statement equals the ledger read independently (DuckDB on the data dir)
    ledger = dict(
        duckdb.sql(
            f"SELECT entity, sum(amount_krw) FROM read_parquet('{tmp_path}/data/ledgers/billing/*/*.parquet')"
            " GROUP BY entity"
        ).fetchall()
    )
    assert {e: Decimal(r["total_krw"]) for e, r in summary.items()} == ledger
    for entity in ("gov", "samsung"):
        with (pack / "finance" / f"statement-{entity}.csv").open() as handle:
            lines = list(csv.DictReader(handle))
        assert sum(Decimal(line["amount_krw"]) for line in lines) == ledger[entity]
        assert all(line["entity"] == entity for line in lines)
    gov_lines = list(csv.DictReader((pack / "finance" / "statement-gov.csv").read_text().splitlines()))
    assert [line["charge_class"] for line in gov_lines] == ["correction", "usage"]
    assert gov_lines[1]["gpu_hours"] == "3.500000" and gov_lines[1]["rate_krw_per_gpu_hour"] == "2000.50"
    # and the statement's totals are formulas over its lines that Excel computes to the ledger:
    # usage 7,001 + corrections 2,000 = 9,001; VAT 10 % of 9,001 = 900.1 → 900 (truncate); 9,901
    sheet = openpyxl.load_workbook(pack / "finance" / "statement-gov.xlsx").active
    assert evaluate(sheet, formula_right_of(sheet, "사용료 Usage")) == Decimal(7001)
    assert evaluate(sheet, formula_right_of(sheet, "정정 Corrections")) == Decimal(2000)
    assert formula_right_of(sheet, "공급가액 Subtotal").startswith("=SUM(")
    assert evaluate(sheet, formula_right_of(sheet, "공급가액 Subtotal")) == ledger["gov"] == Decimal(9001)
    assert formula_right_of(sheet, "부가세 VAT").startswith("=ROUNDDOWN(")
    assert evaluate(sheet, formula_right_of(sheet, "부가세 VAT")) == Decimal(900)
    assert evaluate(sheet, formula_right_of(sheet, "합계 Total")) == Decimal(9901)
    assert summary["gov"]["vat_krw"] == "900" and summary["gov"]["total_with_vat_krw"] == "9901"
    # and the cached values (what a viewer that does not recalculate shows) are the same
    cached = openpyxl.load_workbook(pack / "finance" / "statement-gov.xlsx", data_only=True).active
    assert cached.cell(find_row(cached, "합계 Total"), 12).value == 9901
    assert [t.total_krw for t in result.totals] == [Decimal(9001), Decimal(925)]


def test_hours_totals_are_the_exact_usage_rounded_once_everywhere(tmp_path: Path) -> None:
    # given a month whose three line hours (1/3 h each, 0.333333 shown) sum to 0.999999 while
    # the exact usage is exactly 1 h — the disagreement the manifest and summary used to have
    store = Store(tmp_path / "data")
    third = HOUR_US // 3
    rows = [
        {**billing_frame().row(0, named=True), "project": p, "gpu_microseconds": third, "gpu_hours": Decimal("0.333333"),
         "amount_krw": Decimal(666)}
        for p in ("a", "b", "c")
    ]
    billing = store.path("ledgers/billing", f"period={PERIOD}", "billing.parquet")
    store.write_parquet_atomic(billing, to_table(pl.DataFrame(rows, schema=billing_frame().schema), BILLING))
    seal_period(store, PERIOD, [billing], {"billed_gpu_hours.gov": "1.000000", "amount_krw.gov": "1998"})
    # when it is exported
    export_month(store, PERIOD, tmp_path / "out")
    pack = tmp_path / "out" / PERIOD
    # then summary.csv, the statement and the programme workbook say 1.00 h (GPU-hours a person reads:
    # 2 places, rounded once from the exact µs), though each line shows 0.33 h; the README says 1.000000
    summary = {r["entity"]: r for r in csv.DictReader((pack / "finance/summary.csv").read_text("utf-8-sig").splitlines())}
    assert summary["gov"]["billed_gpu_hours"] == "1.00"
    statement = openpyxl.load_workbook(pack / "finance/statement-gov.xlsx").active
    assert statement.cell(find_row(statement, "청구 GPU·시간 합계"), 8).value == 1.0
    first_line = find_row(statement, "사용 usage")
    assert [statement.cell(first_line + i, 8).value for i in range(3)] == [0.33, 0.33, 0.33]
    programme = openpyxl.load_workbook(pack / f"finance/programme-{PERIOD}.xlsx")["청구 Billing"]
    assert programme.cell(find_row(programme, "gov"), 4).value == 1.0
    assert "| gov | 1.000000 | 1998 | 0 | 1998 |" in (pack / "auditor/README.md").read_text()


def test_auditor_pack_readme_sql_rederives_every_total(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # given an exported, signed month
    keys = tmp_path / "keys"
    generate_keypair(keys / "seal.pem", keys / "seal.pub.pem")
    store = build_month(tmp_path / "data", signing_key=keys / "seal.pem")
    export_month(store, PERIOD, tmp_path / "out")
    auditor = tmp_path / "out" / PERIOD / "auditor"
    readme = (auditor / "README.md").read_text()
    sql = _blocks(readme, "sql")
    assert len(sql) == 4  # totals, line amounts, usage vs billed, compliance vs usage
    # when an auditor runs the README's queries from the pack directory
    monkeypatch.chdir(auditor)
    con = duckdb.connect()
    totals = con.sql(sql[0]).fetchall()
    # then the first gives the ledger's statement totals, the others find no difference
    assert [(e, usage, corr, total) for e, _, usage, corr, total in totals] == [
        ("gov", Decimal(7001), Decimal(2000), Decimal(9001)),
        ("samsung", Decimal(925), Decimal(0), Decimal(925)),
    ]
    for query in sql[1:]:
        assert con.sql(query).fetchall() == [], query
    # and the Polars block runs as written
    (python_block,) = _blocks(readme, "python")
    exec(compile(python_block, "README.md", "exec"), {})  # noqa: S102 - the README is ours
    # and every copied file hashes to its manifest entry
    for line in (auditor / "SHA256SUMS").read_text().splitlines():
        digest, rel = line.split("  ", 1)
        assert hashlib.sha256((auditor / rel).read_bytes()).hexdigest() == digest
    assert (auditor / "manifests" / f"{PERIOD}.json.sig").stat().st_size == 64
    assert pq.read_metadata(auditor / "ledgers/billing/period=2026-11/billing.parquet").num_rows == 3


def test_the_readme_sql_notices_a_wrong_amount(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the line check is not vacuous: a ledger line off by one won is returned
    store = build_month(tmp_path / "data")
    export_month(store, PERIOD, tmp_path / "out")
    auditor = tmp_path / "out" / PERIOD / "auditor"
    query = _blocks((auditor / "README.md").read_text(), "sql")[1]
    path = auditor / "ledgers/billing/period=2026-11/billing.parquet"
    table = pq.read_table(path)
    amounts = table["amount_krw"].to_pylist()
    amounts[0] += 1
    import pyarrow as pa

    table = table.set_column(table.schema.get_field_index("amount_krw"), "amount_krw", pa.array(amounts, table.schema.field("amount_krw").type))
    pq.write_table(table, path)
    monkeypatch.chdir(auditor)
    assert len(duckdb.sql(query).fetchall()) == 1


def test_export_refuses_an_unsealed_or_altered_month(tmp_path: Path) -> None:
    store = Store(tmp_path / "empty")
    with pytest.raises(ExportError, match="not closed"):
        export_month(store, PERIOD, tmp_path / "out")
    store = build_month(tmp_path / "data")
    ledger = tmp_path / "data/ledgers/billing/period=2026-11/billing.parquet"
    raw = bytearray(ledger.read_bytes())
    raw[100] ^= 0x01
    ledger.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError, match="does not match"):
        export_month(store, PERIOD, tmp_path / "out2")


def test_readme_sql_agrees_with_a_real_close_with_a_rate_change_and_a_correction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from acct_given import golden_registry, hours, usage, write_usage

    from accounting.close import close_month

    # given November usage across gov's mid-month rate change, closed; then a late November
    # hour and December usage, and December closed (the late hour becomes a correction)
    store = Store(tmp_path / "data")
    b200 = "NVIDIA B200"
    rows = hours("2026-11-15T01:00", 10, entity="gov", project="snu-llm", gpu_model=b200, gpu_uuid="GPU-1")
    rows += hours("2026-11-16T01:00", 6, entity="gov", project="snu-llm", gpu_model=b200, gpu_uuid="GPU-1")
    rows += hours("2026-11-02T00:00", 5, entity="gov", project="unattributed", gpu_model=b200, gpu_uuid="GPU-2")
    rows += [usage("2026-11-10T03:00", "samsung", "samsung-foundry-ai", b200, "GPU-9", gpu_us=2_057_142_900, busy_us=1)]
    write_usage(store, rows, "b1")
    registry = golden_registry()
    close_month(store, registry, "2026-11")
    write_usage(store, [usage("2026-11-20T03:00", "gov", "snu-llm", b200, "GPU-1")], "late")
    write_usage(store, hours("2026-12-03T00:00", 4, entity="gov", project="snu-llm", gpu_model=b200, gpu_uuid="GPU-1"), "b2")
    close_month(store, registry, "2026-12")
    # when both months are exported
    for period in ("2026-11", "2026-12"):
        result = export_month(store, period, tmp_path / "out", registry=registry)
        auditor = tmp_path / "out" / period / "auditor"
        sql = _blocks((auditor / "README.md").read_text(), "sql")
        monkeypatch.chdir(auditor)
        # then the README's totals query gives the exported totals and the checks find nothing
        got = {e: total for e, _, _, _, total in duckdb.sql(sql[0]).fetchall()}
        assert got == {t.entity: t.total_krw for t in result.totals if t.total_krw or t.entity in got}
        for query in sql[1:]:
            assert duckdb.sql(query).fetchall() == [], (period, query)
    december = list(csv.DictReader((tmp_path / "out/2026-12/finance/statement-gov.csv").read_text().splitlines()))
    assert [line["charge_class"] for line in december] == ["correction", "usage"]


def test_vat_is_the_registry_setting_rounded_by_the_registry_rule(tmp_path: Path) -> None:
    # given the sample registry with VAT 5.55 % and half-up rounding, and the hand-worked month
    text = (REPO / "examples" / "registry.toml").read_text()
    text = text.replace('rounding = "truncate"', 'rounding = "half_up"').replace("vat_percent = 10", "vat_percent = 5.55")
    registry = loads_registry(text)
    store = build_month(tmp_path / "data")
    # when it is exported with that registry
    export_month(store, PERIOD, tmp_path / "out", registry=registry)
    pack = tmp_path / "out" / PERIOD / "finance"
    # then gov's VAT is 9,001 × 5.55 % = 499.5555 → 500 (half up), in the CSV and by the formula
    summary = {r["entity"]: r for r in csv.DictReader((pack / "summary.csv").read_text().splitlines())}
    assert (summary["gov"]["vat_krw"], summary["gov"]["total_with_vat_krw"]) == ("500", "9501")
    sheet = openpyxl.load_workbook(pack / "statement-gov.xlsx").active
    assert formula_right_of(sheet, "부가세 VAT").startswith("=ROUND(")
    assert evaluate(sheet, formula_right_of(sheet, "부가세 VAT")) == Decimal(500)
    bill_to = next(c.value for row in sheet.iter_rows(max_row=6) for c in row if str(c.value).startswith("대한민국 정부"))
    assert bill_to.startswith("대한민국 정부 (state pool) (gov) · 등록번호 305-82-00070")
    # and an entity of the registry that used nothing still gets a (zero) statement
    assert summary["naver"]["total_krw"] == "0" and (pack / "statement-naver.xlsx").exists()


def test_a_vat_rate_outside_0_to_100_is_a_registry_error() -> None:
    text = (REPO / "examples" / "registry.toml").read_text().replace("vat_percent = 10", "vat_percent = 110")
    with pytest.raises(RegistryError, match="billing.vat_percent: must be between 0 and 100"):
        loads_registry(text)
    without = (REPO / "examples" / "registry.toml").read_text().replace("vat_percent = 10\n", "")
    assert loads_registry(without).vat_percent == Decimal(10)
