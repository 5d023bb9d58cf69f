"""The close's day scan bounds Polars' Parquet prefetch for its own scans only.

Polars decodes many row groups ahead of a streaming query unless told otherwise; the close
sets one row group ahead around a day's scans (so a national day is not held decoded at
once), must leave no trace in the process afterwards, and must respect an operator's setting.
"""

from __future__ import annotations

import os

import pytest

from accounting import usage

pytestmark = pytest.mark.unit

PREFETCH = "POLARS_ROW_GROUP_PREFETCH_SIZE"


def test_one_row_group_ahead_during_the_scan_and_nothing_left_after(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PREFETCH, raising=False)
    with usage._one_row_group_ahead():
        assert os.environ[PREFETCH] == "1"
    assert PREFETCH not in os.environ


def test_removed_even_when_the_scan_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PREFETCH, raising=False)
    with pytest.raises(RuntimeError), usage._one_row_group_ahead():
        raise RuntimeError("scan failed")
    assert PREFETCH not in os.environ


def test_an_operators_setting_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PREFETCH, "8")
    with usage._one_row_group_ahead():
        assert os.environ[PREFETCH] == "8"
    assert os.environ[PREFETCH] == "8"
