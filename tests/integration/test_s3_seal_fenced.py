"""Sealing is fenced on S3 too (issue 15): a close whose lease expired mid-close while another
took it and sealed writes nothing into the bucket; one manifest, ``verify`` ok."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from s3_server import S3Endpoint
from test_s3_storage import options

from storage.dataset import Store
from storage.manifest import sealed_periods, verify

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from test_seal_fenced import assert_lost_in_one_line, stalled_first_close  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.s3]


@pytest.mark.parametrize(("step", "late"), [("writing ledgers", True), ("writing the seal", False)])
def test_a_close_whose_lease_expired_mid_close_on_s3_writes_nothing(
        s3: S3Endpoint, s3_prefix: str, step: str, late: bool, capsys: pytest.CaptureFixture[str]) -> None:
    store = Store(s3.url(s3_prefix, "data"), s3_options=options(s3))
    store, lost = stalled_first_close(store, step, late=late)
    assert_lost_in_one_line(lost, capsys)
    assert sealed_periods(store) == ["2026-11"]
    report = verify(store, every_file=True)
    assert report.ok, [str(d) for d in report.differences]
