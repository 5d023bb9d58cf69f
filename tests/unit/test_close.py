"""The close as a whole: byte-identical re-runs, closed periods never rewritten, due months, sealing."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from acct_given import GOLDEN_REGISTRY, SAMPLE_REGISTRY, golden_registry, hours, ledger, usage, write_usage

from accounting.close import closed_periods, close_month, due_months
from accounting.errors import CloseError
from accounting.registry import load_registry, loads_registry
from storage import manifest
from storage.dataset import Store

pytestmark = pytest.mark.unit

B200 = "NVIDIA B200"


def _month_of_usage(store: Store) -> None:
    rows = hours("2026-11-01T00:00", 30, entity="gov", project="snu-llm", gpu_model=B200, gpu_uuid="GPU-1")
    rows += hours("2026-11-20T00:00", 5, entity="samsung", project="samsung-foundry-ai", gpu_model=B200, gpu_uuid="GPU-2")
    write_usage(store, rows[:20], "b1")
    write_usage(store, rows[20:], "b2")


def _digest(store: Store, rel: str) -> str:
    return hashlib.sha256(store.read_bytes(store.path(rel))).hexdigest()


def test_same_inputs_give_byte_identical_ledgers_and_manifest(tmp_path: Path) -> None:
    # Given the same usage written into two data directories
    first, second = Store(tmp_path / "a"), Store(tmp_path / "b")
    for store in (first, second):
        _month_of_usage(store)
    # When both close November
    r1 = close_month(first, golden_registry(), "2026-11")
    r2 = close_month(second, golden_registry(), "2026-11")
    # Then every ledger byte and the manifest hash are the same
    for rel in ("ledgers/billing/period=2026-11/billing.parquet", "ledgers/compliance/period=2026-11/compliance.parquet"):
        assert _digest(first, rel) == _digest(second, rel)
    assert r1.manifest_sha256 is not None and r1.manifest_sha256 == r2.manifest_sha256
    assert r1.totals["gov"].amount_krw == Decimal(30 * 2000)
    assert r1.totals["ALL"].amount_krw == Decimal(30 * 2000 + 5 * 4500)


def test_closing_a_closed_month_again_is_a_no_op_that_says_so(tmp_path: Path) -> None:
    store = Store(tmp_path)
    _month_of_usage(store)
    close_month(store, golden_registry(), "2026-11")
    before = _digest(store, "ledgers/billing/period=2026-11/billing.parquet")
    write_usage(store, [usage("2026-11-02T00:00", "gov", "snu-llm", B200, "GPU-3")], "late")
    result = close_month(store, golden_registry(), "2026-11")
    assert result.already_closed
    assert "closed already" in result.message
    assert _digest(store, "ledgers/billing/period=2026-11/billing.parquet") == before
    assert result.totals["gov"].amount_krw == Decimal(30 * 2000)


def test_a_month_older_than_a_closed_one_cannot_be_closed(tmp_path: Path) -> None:
    store = Store(tmp_path)
    write_usage(store, [usage("2026-10-05T00:00", "gov", "snu-llm", B200, "GPU-1")], "oct")
    write_usage(store, [usage("2026-11-05T00:00", "gov", "snu-llm", B200, "GPU-1")], "nov")
    close_month(store, golden_registry(), "2026-11")
    with pytest.raises(CloseError, match="2026-11 is closed already"):
        close_month(store, golden_registry(), "2026-10")
    assert closed_periods(store) == ["2026-11"]


def test_due_months_are_the_ended_unclosed_months_with_usage_oldest_first(tmp_path: Path) -> None:
    store = Store(tmp_path)
    for month in ("2026-09", "2026-10", "2026-11"):
        write_usage(store, [usage(f"{month}-05T00:00", "gov", "snu-llm", B200, "GPU-1")], f"b{month}")
    # 14:59 UTC on 30 November is still November in Seoul: November is not due yet
    assert due_months(store, datetime(2026, 11, 30, 14, 59, tzinfo=UTC)) == ["2026-09", "2026-10"]
    # 15:00 UTC is 00:00 KST on 1 December: November has ended
    assert due_months(store, datetime(2026, 11, 30, 15, 0, tzinfo=UTC)) == ["2026-09", "2026-10", "2026-11"]
    close_month(store, golden_registry(), "2026-09")
    assert due_months(store, datetime(2026, 12, 10, tzinfo=UTC)) == ["2026-10", "2026-11"]
    close_month(store, golden_registry(), "2026-11")  # October skipped: it can no longer be closed
    assert due_months(store, datetime(2026, 12, 10, tzinfo=UTC)) == []


def test_close_seals_the_period_and_verify_passes(tmp_path: Path) -> None:
    store = Store(tmp_path)
    _month_of_usage(store)
    result = close_month(store, golden_registry(), "2026-11")
    assert result.sealed
    report = manifest.verify(store)
    assert report.ok, report.differences
    assert "2026-11" in report.periods


def test_bad_month_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CloseError, match="expected YYYY-MM"):
        close_month(Store(tmp_path), golden_registry(), "2026-13")


def test_sample_registry_closes_a_small_month(tmp_path: Path) -> None:
    # The sample registry of docs/architecture.md prices every model of every pool: a close never stops
    store = Store(tmp_path)
    reg = load_registry(SAMPLE_REGISTRY)
    rows = [
        usage("2026-11-03T00:00", entity, project, model, f"GPU-{entity}-{model}")
        for entity, project in (("gov", "etri-sovereign"), ("samsung", "samsung-foundry-ai"), ("hyundai", "hyundai-autonomy"),
                                ("skt", "skt-ax"), ("naver", "naver-hyperclova"))
        for model in ("NVIDIA B200", "NVIDIA GB200", "NVIDIA H100 80GB HBM3")
    ]
    write_usage(store, rows, "b1")
    result = close_month(store, reg, "2026-11")
    assert result.billing_lines == 15
    # etri (institute, 40 % off): 3900×0.6 + 5200×0.6 + 2800×0.6 = 2340 + 3120 + 1680
    assert result.totals["gov"].amount_krw == Decimal("7140")


def test_only_periods_whose_usage_changed_are_re_read_for_corrections(tmp_path: Path) -> None:
    # Given November closed
    store = Store(tmp_path)
    reg = golden_registry()
    write_usage(store, [usage("2026-11-05T00:00", "gov", "snu-llm", B200, "GPU-1")], "nov")
    close_month(store, reg, "2026-11")
    # When December closes with no late data for November, November is not re-read
    write_usage(store, [usage("2026-12-05T00:00", "gov", "snu-llm", B200, "GPU-1")], "dec")
    assert close_month(store, reg, "2026-12").restated_periods == ()
    # When late November data arrives, January re-reads November (and only November)
    write_usage(store, [usage("2026-11-06T00:00", "gov", "snu-llm", B200, "GPU-1")], "late")
    january = close_month(store, reg, "2027-01")
    assert january.restated_periods == ("2026-11",)
    assert january.correction_lines == 1
    # When the record of the last close is lost, every earlier period is re-read, with no new lines
    store.delete(store.path("ledgers", "_closed", "2027-01.json"))
    write_usage(store, [usage("2027-02-05T00:00", "gov", "snu-llm", B200, "GPU-1")], "feb")
    february = close_month(store, reg, "2027-02")
    assert february.restated_periods == ("2026-11", "2026-12")  # January had no usage
    assert february.correction_lines == 0


def test_a_changed_rate_card_restates_earlier_periods(tmp_path: Path) -> None:
    # Given November billed at 4000 − 50 % = 2000 for 1 h
    store = Store(tmp_path)
    write_usage(store, [usage("2026-11-05T00:00", "gov", "snu-llm", B200, "GPU-1")], "nov")
    close_month(store, golden_registry(), "2026-11")
    # When the registry's university discount for November is amended to 60 % and December closes
    amended = loads_registry(GOLDEN_REGISTRY.replace("university = 50", "university = 60"), source="amended.toml")
    december = close_month(store, amended, "2026-12")
    # Then November is restated: −2000 at the old rate, +1600 at the new one
    assert december.restated_periods == ("2026-11",)
    lines = ledger(store, "billing", "2026-12")
    assert sorted((r["rate_krw_per_gpu_hour"], r["amount_krw"]) for r in lines) == [
        (Decimal("1600.00"), Decimal("1600")),
        (Decimal("2000.00"), Decimal("-2000")),
    ]
