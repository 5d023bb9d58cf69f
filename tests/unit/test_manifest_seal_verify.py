"""Sealing a period and verifying it: tampering, chain breaks, signatures (docs/architecture.md invariant 5)."""

from __future__ import annotations

import hashlib
import json
import posixpath
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

from accounting.schemas import BILLING
from storage.dataset import Store, to_table
from storage.errors import IntegrityError, StorageError
from storage.manifest import (
    DifferenceKind,
    generate_keypair,
    manifest_path,
    seal_period,
    verify,
)

pytestmark = pytest.mark.unit


def _billing_frame(period: str, amount: int) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "period": [period],
            "entity": ["gov"],
            "project": ["snu-llm"],
            "project_class": ["university"],
            "gpu_model": ["NVIDIA B200"],
            "charge_class": ["usage"],
            "corrects_period": [None],
            "rate_from": [datetime(2026, 11, 1).date()],
            "rate_to": [datetime(2026, 11, 30).date()],
            "gpu_microseconds": [3_600_000_000],
            "gpu_hours": [Decimal("1.000000")],
            "list_rate_krw_per_gpu_hour": [Decimal(amount)],
            "discount_percent": [Decimal("0")],
            "rate_krw_per_gpu_hour": [Decimal(amount)],
            "amount_krw": [Decimal(amount)],
        }
    )


def _write_ledger(store: Store, period: str, amount: int) -> str:
    path = store.path("ledgers/billing", f"period={period}", "billing.parquet")
    store.write_parquet_atomic(path, to_table(_billing_frame(period, amount), BILLING))
    return path


def _close(store: Store, period: str, amount: int, key: Path | None = None) -> str:
    path = _write_ledger(store, period, amount)
    return seal_period(store, period, [path], {"amount_krw.gov": str(amount)}, signing_key=key)


def _kinds(report) -> list[DifferenceKind]:
    return [d.kind for d in report.differences]


def test_sealed_periods_verify_clean_and_chain(tmp_path: Path) -> None:
    # given two closed months
    store = Store(tmp_path / "data")
    first = _close(store, "2026-10", 1000)
    second = _close(store, "2026-11", 2000)
    # then the second manifest points at the bytes of the first, and verify finds nothing
    doc = json.loads(store.read_bytes(manifest_path(store, "2026-11")))
    assert doc["previous"] == {"period": "2026-10", "sha256": first}
    assert second == hashlib.sha256(store.read_bytes(manifest_path(store, "2026-11"))).hexdigest()
    entry = doc["files"][0]
    assert entry["path"] == "ledgers/billing/period=2026-11/billing.parquet"
    assert entry["rows"] == 1
    assert entry["sha256"] == hashlib.sha256(Path(store.path(entry["path"])).read_bytes()).hexdigest()
    assert "amount_krw: decimal128(24, 0)" in entry["schema"]
    assert doc["totals"] == {"amount_krw.gov": "2000"}
    report = verify(store)
    assert report.ok, report.differences
    assert report.periods == ("2026-10", "2026-11")
    assert report.files_checked == 2


def test_sealing_is_deterministic_and_idempotent(tmp_path: Path) -> None:
    store = Store(tmp_path / "data")
    path = _write_ledger(store, "2026-11", 5)
    fixed = datetime(2026, 12, 1, 1, 0, tzinfo=UTC)
    first = seal_period(store, "2026-11", [path], {"b": "2", "a": "1.50"}, sealed_at=fixed)
    before = store.read_bytes(manifest_path(store, "2026-11"))
    again = seal_period(store, "2026-11", [path], {"a": "1.50", "b": "2"}, sealed_at=fixed)
    assert first == again
    assert store.read_bytes(manifest_path(store, "2026-11")) == before
    # a sealed period is never rewritten with other content
    with pytest.raises(IntegrityError, match="sealed already"):
        seal_period(store, "2026-11", [path], {"a": "9"}, sealed_at=fixed)


def test_a_tampered_byte_is_caught(tmp_path: Path) -> None:
    # given a sealed month
    store = Store(tmp_path / "data")
    path = _write_ledger(store, "2026-11", 1234)
    seal_period(store, "2026-11", [path], {"amount_krw": "1234"})
    # when one byte in the middle of the Parquet file is flipped
    raw = bytearray(Path(path).read_bytes())
    raw[len(raw) // 2] ^= 0x01
    Path(path).write_bytes(bytes(raw))
    # then verify names the file as changed
    report = verify(store)
    assert not report.ok
    assert DifferenceKind.FILE_CHANGED in _kinds(report)
    assert report.differences[0].path == "ledgers/billing/period=2026-11/billing.parquet"


def test_a_rewritten_ledger_with_other_rows_is_named(tmp_path: Path) -> None:
    store = Store(tmp_path / "data")
    path = _write_ledger(store, "2026-11", 1234)
    seal_period(store, "2026-11", [path], {"amount_krw": "1234"})
    doubled = pl.concat([_billing_frame("2026-11", 1234)] * 2)
    store.write_parquet_atomic(path, to_table(doubled, BILLING))
    kinds = _kinds(verify(store))
    assert DifferenceKind.FILE_CHANGED in kinds
    assert DifferenceKind.ROWS_CHANGED in kinds
    assert pq.read_metadata(path).num_rows == 2


def test_missing_and_extra_files(tmp_path: Path) -> None:
    store = Store(tmp_path / "data")
    path = _write_ledger(store, "2026-11", 10)
    seal_period(store, "2026-11", [path], {"amount_krw": "10"})
    extra = store.path("ledgers/billing/period=2026-11/part-forged.parquet")
    store.write_parquet_atomic(extra, to_table(_billing_frame("2026-11", 99), BILLING))
    store.delete(path)
    report = verify(store)
    assert sorted(_kinds(report)) == sorted([DifferenceKind.FILE_MISSING, DifferenceKind.EXTRA_FILE])
    assert any(d.path == "ledgers/billing/period=2026-11/part-forged.parquet" for d in report.differences)


def test_late_usage_in_a_sealed_input_partition_is_a_note_not_a_difference(tmp_path: Path) -> None:
    store = Store(tmp_path / "data")
    ledger = _write_ledger(store, "2026-11", 10)
    usage = store.path("usage_hourly/period=2026-11/date=2026-11-30/part-a.parquet")
    store.write_parquet_atomic(usage, to_table(_billing_frame("2026-11", 1), BILLING))
    seal_period(store, "2026-11", [ledger, usage], {"amount_krw": "10"})
    late = store.path("usage_hourly/period=2026-11/date=2026-11-30/part-late.parquet")
    store.write_parquet_atomic(late, to_table(_billing_frame("2026-11", 1), BILLING))
    report = verify(store)
    assert report.ok
    assert any("part-late.parquet" in note for note in report.notes)


def test_chain_broken_when_an_earlier_manifest_is_edited_or_removed(tmp_path: Path) -> None:
    store = Store(tmp_path / "data")
    for i, period in enumerate(["2026-09", "2026-10", "2026-11"]):
        _close(store, period, 100 + i)
    # when the October manifest is rewritten consistently (self-hash recomputed) by a forger
    october = manifest_path(store, "2026-10")
    doc = json.loads(store.read_bytes(october))
    doc["totals"]["amount_krw.gov"] = "1"
    body = {k: v for k, v in doc.items() if k != "manifest_sha256"}
    doc["manifest_sha256"] = hashlib.sha256(
        json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    ).hexdigest()
    store.write_bytes_atomic(october, (json.dumps(doc, sort_keys=True, indent=2) + "\n").encode())
    report = verify(store)
    broken = [d for d in report.differences if d.kind == DifferenceKind.CHAIN_BROKEN]
    assert [d.period for d in broken] == ["2026-11"]
    assert "chain broken at 2026-11" in str(broken[0])
    # when instead the September manifest disappears
    store2 = Store(tmp_path / "data2")
    for i, period in enumerate(["2026-09", "2026-10"]):
        _close(store2, period, 100 + i)
    store2.delete(manifest_path(store2, "2026-09"))
    kinds = {(d.kind, d.period) for d in verify(store2).differences}
    assert (DifferenceKind.CHAIN_BROKEN, "2026-10") in kinds
    assert (DifferenceKind.UNSEALED_PERIOD, "2026-09") in kinds


def test_an_edited_newest_manifest_is_caught_by_its_own_hash(tmp_path: Path) -> None:
    store = Store(tmp_path / "data")
    _close(store, "2026-11", 500)
    path = manifest_path(store, "2026-11")
    text = store.read_bytes(path).decode().replace('"500"', '"5"')
    store.write_bytes_atomic(path, text.encode())
    assert _kinds(verify(store)) == [DifferenceKind.MANIFEST_ALTERED]


def test_signature_good_bad_and_missing(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    generate_keypair(keys / "seal.pem", keys / "seal.pub.pem")
    other = tmp_path / "other"
    generate_keypair(other / "k.pem", other / "k.pub.pem")
    assert (keys / "seal.pem").stat().st_mode & 0o777 == 0o600
    with pytest.raises(StorageError, match="refusing"):
        generate_keypair(keys / "seal.pem", keys / "x.pub.pem")

    store = Store(tmp_path / "data")
    _close(store, "2026-10", 1, key=keys / "seal.pem")
    _close(store, "2026-11", 2, key=keys / "seal.pem")
    sig = manifest_path(store, "2026-11") + ".sig"
    assert len(store.read_bytes(sig)) == 64
    good = verify(store, public_key=keys / "seal.pub.pem")
    assert good.ok and good.signatures_checked == 2
    # another operator's key does not vouch for these seals
    wrong = verify(store, public_key=other / "k.pub.pem")
    assert _kinds(wrong) == [DifferenceKind.SIGNATURE_BAD, DifferenceKind.SIGNATURE_BAD]
    # a flipped signature byte, and a removed signature
    raw = bytearray(store.read_bytes(sig))
    raw[0] ^= 0xFF
    store.write_bytes_atomic(sig, bytes(raw))
    store.delete(manifest_path(store, "2026-10") + ".sig")
    report = verify(store, public_key=keys / "seal.pub.pem")
    assert {(d.kind, d.period) for d in report.differences} == {
        (DifferenceKind.SIGNATURE_MISSING, "2026-10"),
        (DifferenceKind.SIGNATURE_BAD, "2026-11"),
    }


def test_refuses_bad_inputs_and_out_of_order_seals(tmp_path: Path) -> None:
    store = Store(tmp_path / "data")
    path = _write_ledger(store, "2026-11", 1)
    with pytest.raises(StorageError, match="bad period"):
        seal_period(store, "2026-13", [path], {})
    with pytest.raises(StorageError, match="not decimal"):
        seal_period(store, "2026-11", [path], {"x": "1,000", "y": "nan"})
    with pytest.raises(StorageError, match="missing files"):
        seal_period(store, "2026-11", [posixpath.join(store.root, "nope.parquet")], {})
    seal_period(store, "2026-11", [path], {"x": Decimal("1.5")})
    with pytest.raises(IntegrityError, match="later period 2026-11"):
        seal_period(store, "2026-10", [path], {})


def test_any_flipped_bit_in_any_sealed_file_is_caught() -> None:
    """Invariant 5 as a property: whichever byte and bit of a sealed file changes, verify names it."""
    import shutil
    import tempfile

    from hypothesis import given, settings
    from hypothesis import strategies as st

    base = Path(tempfile.mkdtemp(prefix="seal-"))
    try:
        store = Store(base / "data")
        path = _write_ledger(store, "2026-11", 777)
        manifest_bytes = seal_period(store, "2026-11", [path], {"amount_krw": "777"})
        original = Path(path).read_bytes()
        manifest_file = Path(manifest_path(store, "2026-11"))
        sealed_manifest = manifest_file.read_bytes()
        assert manifest_bytes

        @settings(max_examples=60, deadline=None)
        @given(
            target=st.sampled_from(["ledger", "manifest"]),
            fraction=st.floats(min_value=0, max_value=1, exclude_max=True),
            bit=st.integers(min_value=0, max_value=7),
        )
        def flip(target: str, fraction: float, bit: int) -> None:
            victim, data = (Path(path), original) if target == "ledger" else (manifest_file, sealed_manifest)
            tampered = bytearray(data)
            tampered[int(fraction * len(data))] ^= 1 << bit
            victim.write_bytes(bytes(tampered))
            try:
                assert not verify(store).ok
            finally:
                victim.write_bytes(data)

        flip()
        assert verify(store).ok
    finally:
        shutil.rmtree(base, ignore_errors=True)
