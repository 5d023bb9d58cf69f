"""A close never seals a ledger it did not compute, and verify names a gap in the chain."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from acct_given import golden_registry, hours, ledger, write_usage

from accounting.close import close_month
from accounting.errors import CloseError
from storage import manifest
from storage.dataset import Store

pytestmark = pytest.mark.unit

B200 = "NVIDIA B200"


def closed_store(tmp_path: Path, months: tuple[str, ...] = ("2026-11",)) -> Store:
    store = Store(tmp_path)
    for i, month in enumerate(months):
        write_usage(store, hours(f"{month}-10T03:00", 5, entity="samsung", project="samsung-foundry-ai",
                                 gpu_model=B200, gpu_uuid="GPU-1"), f"b{i}")
        close_month(store, golden_registry(), month)
    return store


def add_to_amount(path: Path, krw: int) -> None:
    table = pq.read_table(path)
    amounts = table.column("amount_krw").to_pylist()
    amounts[0] += krw
    index = table.schema.get_field_index("amount_krw")
    table = table.set_column(index, table.schema.field(index), pa.array(amounts, table.schema.field(index).type))
    pq.write_table(table, path, compression="zstd")


def test_a_forged_ledger_with_its_manifest_deleted_is_not_resealed(tmp_path: Path) -> None:
    # given November closed and sealed (5 GPU-h × 4500 = 22,500 KRW)
    store = closed_store(tmp_path)
    bill = tmp_path / "ledgers/billing/period=2026-11/billing.parquet"
    assert [r["amount_krw"] for r in ledger(store, "billing", "2026-11")] == [Decimal("22500")]
    # when someone adds 1,000,000 KRW to the billing ledger and deletes the manifest
    add_to_amount(bill, 1_000_000)
    (tmp_path / "manifests/2026-11.json").unlink()

    # then closing November again refuses to seal it, naming the file and what to do
    with pytest.raises(CloseError, match=r"cannot seal 2026-11: .*billing\.parquet differs from what a close computes.*manifests/2026-11\.json is missing"):
        close_month(store, golden_registry(), "2026-11")
    assert not (tmp_path / "manifests/2026-11.json").exists()
    # and verify reports the unsealed ledger
    report = manifest.verify(store)
    assert not report.ok
    assert {(d.kind, d.period) for d in report.differences} >= {(manifest.DifferenceKind.UNSEALED_PERIOD, "2026-11")}


def test_a_forged_compliance_ledger_is_not_resealed_either(tmp_path: Path) -> None:
    store = closed_store(tmp_path)
    comp = tmp_path / "ledgers/compliance/period=2026-11/compliance.parquet"
    table = pq.read_table(comp)
    pq.write_table(table.slice(1), comp)  # a row dropped
    (tmp_path / "manifests/2026-11.json").unlink()
    with pytest.raises(CloseError, match=r"compliance\.parquet differs"):
        close_month(store, golden_registry(), "2026-11")


def test_an_honest_close_that_stopped_before_its_seal_is_sealed(tmp_path: Path) -> None:
    # given November's ledgers written but its seal missing (a close killed just before sealing)
    store = closed_store(tmp_path)
    sealed = (tmp_path / "manifests/2026-11.json").read_bytes()
    (tmp_path / "manifests/2026-11.json").unlink()
    # when closed again, then the same seal is written and verify passes
    result = close_month(store, golden_registry(), "2026-11")
    assert result.already_closed and result.sealed
    assert (tmp_path / "manifests/2026-11.json").read_bytes() == sealed
    assert manifest.verify(store).ok


def test_verify_reports_a_gap_in_the_manifest_chain(tmp_path: Path) -> None:
    # given September, October and November closed and sealed
    store = closed_store(tmp_path, ("2026-09", "2026-10", "2026-11"))
    assert manifest.verify(store).ok
    # when October's manifest is deleted
    (tmp_path / "manifests/2026-10.json").unlink()
    # then verify names the gap: November points at a manifest that is gone, and October's
    #   ledgers have no seal
    report = manifest.verify(store)
    found = {(d.kind, d.period) for d in report.differences}
    assert (manifest.DifferenceKind.CHAIN_BROKEN, "2026-11") in found
    assert (manifest.DifferenceKind.UNSEALED_PERIOD, "2026-10") in found
    [broken] = [d for d in report.differences if d.kind == manifest.DifferenceKind.CHAIN_BROKEN]
    assert "2026-10" in broken.detail and "missing" in broken.detail
    # and October cannot be re-sealed behind November's back
    with pytest.raises(Exception, match="2026-11 is sealed already"):
        close_month(store, golden_registry(), "2026-10")


def test_verify_reports_a_deleted_first_manifest(tmp_path: Path) -> None:
    store = closed_store(tmp_path, ("2026-10", "2026-11"))
    (tmp_path / "manifests/2026-10.json").unlink()
    report = manifest.verify(store)
    [broken] = [d for d in report.differences if d.kind == manifest.DifferenceKind.CHAIN_BROKEN]
    assert broken.period == "2026-11" and "2026-10" in broken.detail and "missing" in broken.detail
