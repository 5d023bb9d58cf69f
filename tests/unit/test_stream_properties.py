"""Property: however events are duplicated, split into batches and ordered, stored totals equal
the totals of the distinct events (docs/architecture.md invariant 1)."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from spine_events import ACCOUNTS, event, jsonl

from storage.dataset import Store
from storage.rollup import rolled_up
from storage.schemas import USAGE_HOURLY
from streams.pipeline import BatchProcessor

pytestmark = pytest.mark.unit

EVENTS = [
    event(f"2026-10-{d:02d}T{h:02d}:{m:02d}:00Z", node=f"n{g}", gpu=f"GPU-{g}", gpu_seconds=float(s), busy_gpu_seconds=0.0)
    for d, h, m, g, s in [(1, 0, 0, 1, 60), (1, 0, 1, 1, 30), (1, 23, 59, 2, 45), (31, 14, 59, 1, 60),
                          (31, 15, 0, 1, 60), (2, 3, 4, 3, 1), (2, 3, 5, 3, 59.5), (3, 0, 0, 2, 0)]
]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    picks=st.lists(st.integers(0, len(EVENTS) - 1), min_size=1, max_size=30),
    cuts=st.lists(st.integers(1, 30), max_size=5),
    seed=st.integers(0, 1000),
)
def test_stored_totals_equal_distinct_event_totals(tmp_path_factory, picks, cuts, seed) -> None:
    store = Store(tmp_path_factory.mktemp("p"))
    stream = [EVENTS[i] for i in picks]
    random.Random(seed).shuffle(stream)
    bounds = sorted({0, len(stream), *[c for c in cuts if c < len(stream)]})
    for a, b in zip(bounds, bounds[1:], strict=False):
        BatchProcessor(store, ACCOUNTS).process([(f"m{a}", jsonl(*stream[a:b]))])
    distinct = {EVENTS[i]["event_id"]: EVENTS[i] for i in picks}
    expected = sum(round(e["gpu_seconds"] * 1_000_000) for e in distinct.values())
    hourly = rolled_up(store).scan("usage_hourly", USAGE_HOURLY).collect()
    assert hourly["gpu_microseconds"].sum() == expected
    assert hourly["events"].sum() == len(distinct)
