"""The close's day scan: the wall-clock screen and the Parquet prefetch bound.

The screen (``gpu_hours_screen``) sorts one hash per row instead of grouping on it; it must
keep exactly the hashes the group-by kept (``rows > 1`` or more than an hour plus one µs per
event, nulls summing as 0). Polars decodes many row groups ahead of a streaming query unless
told otherwise; the close sets one row group ahead around a day's scans (so a national day is
not held decoded at once), must leave no trace in the process afterwards, and must respect an
operator's setting.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from accounting import usage
from accounting.wallclock import MICROSECONDS_PER_HOUR

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


rows_of_a_day = st.lists(
    st.tuples(
        st.one_of(st.none(), st.integers(0, 5)),  # GPU (None: a null gpu_uuid)
        st.integers(0, 2),  # hour
        st.one_of(st.none(), st.integers(0, MICROSECONDS_PER_HOUR + 200)),  # µs (the slack boundary)
        st.one_of(st.none(), st.integers(0, 120)),  # events
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(rows_of_a_day)
def test_the_screen_keeps_exactly_the_hashes_the_group_by_kept(rows: list[tuple]) -> None:
    start = datetime(2026, 11, 1, tzinfo=UTC)
    frame = pl.DataFrame(
        {
            "gpu_uuid": [None if g is None else f"GPU-{g}" for g, _, _, _ in rows],
            "hour_start": [start + timedelta(hours=h) for _, h, _, _ in rows],
            "gpu_microseconds": [us for _, _, us, _ in rows],
            "events": [ev for _, _, _, ev in rows],
        },
        schema={"gpu_uuid": pl.String, "hour_start": pl.Datetime("us", "UTC"),
                "gpu_microseconds": pl.Int64, "events": pl.Int64},
    )
    by_group = (
        frame.group_by(usage._gpu_hour_hash())
        .agg(rows=pl.len(), gpu_microseconds=pl.col("gpu_microseconds").sum(), events=pl.col("events").sum())
        .filter((pl.col("rows") > 1) | (pl.col("gpu_microseconds") > MICROSECONDS_PER_HOUR + pl.col("events")))
        .get_column("_gpu_hour")
    )
    assert sorted(usage.gpu_hours_screen(frame.lazy()).to_list()) == sorted(by_group.to_list())
