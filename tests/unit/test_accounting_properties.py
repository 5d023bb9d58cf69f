"""Invariants of docs/architecture.md, checked with hypothesis over random months and late arrivals.

* Invariant 1: over all ledgers, each usage period's billed GPU-time equals the distinct
  billable usage of that period (no loss, no double counting), however late it arrived.
* Restating never double counts: billing the same data incrementally (late batches becoming
  corrections) ends at exactly the amounts of billing it all at once.
* Invariant 3: re-closing changes no byte.
"""

from __future__ import annotations

import tempfile
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from acct_given import golden_registry, ledger, usage, write_usage
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from accounting.close import close_month
from storage.dataset import Store

pytestmark = pytest.mark.unit

CLOSES = ["2026-10", "2026-11", "2026-12", "2027-01"]
OWNERS = [
    ("gov", "snu-llm"),
    ("gov", "upstage-pretrain"),
    ("gov", "unattributed"),
    ("samsung", "samsung-foundry-ai"),
    ("samsung", "unattributed"),
]
START = datetime(2026, 9, 30, 15, tzinfo=UTC)  # 2026-10-01 00:00 KST
HOURS = 92 * 24  # October … December (KST)

row_strategy = st.tuples(
    st.integers(0, HOURS - 1),  # hour of the quarter
    st.sampled_from(OWNERS),
    st.integers(1, 3_600_000_000),  # µs in that hour
    st.integers(0, len(CLOSES) - 1),  # arrives before this close
    st.integers(0, 3),  # device
)


def _rows(spec: list[tuple]) -> list[tuple[int, dict]]:
    out = []
    for hour, (entity, project), micro, arrives, device in spec:
        stamp = (START + timedelta(hours=hour)).strftime("%Y-%m-%dT%H:%M")
        row = usage(stamp, entity, project, "NVIDIA B200", f"GPU-{entity}-{device}", gpu_us=micro, busy_us=micro // 2)
        out.append((arrives, row))
    return out


def _close_all(store: Store, batches: dict[int, list[dict]]) -> None:
    reg = golden_registry()
    for step, period in enumerate(CLOSES):
        if batches.get(step):
            write_usage(store, batches[step], f"step{step}")
        close_month(store, reg, period)


def _billed(store: Store) -> tuple[dict, dict]:
    micro: dict[tuple, int] = defaultdict(int)
    amount: dict[tuple, Decimal] = defaultdict(Decimal)
    for period in CLOSES:
        for r in ledger(store, "billing", period):
            key = (r["corrects_period"] or r["period"], r["entity"], r["project"])
            micro[key] += r["gpu_microseconds"]
            amount[key] += r["amount_krw"]
    return {k: v for k, v in micro.items() if v}, {k: v for k, v in amount.items() if v}


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# one row per owner's device and hour, as the roll-up writes usage_hourly (a device-hour over
# an hour is refused by the roll-up, and capped by the close's wall-clock check)
@given(st.lists(row_strategy, min_size=1, max_size=40, unique_by=lambda t: (t[0], t[1][0], t[4])))
def test_late_data_is_billed_exactly_once_and_restates_to_the_all_at_once_amounts(spec: list[tuple]) -> None:
    rows = _rows(spec)
    expected: dict[tuple, int] = defaultdict(int)
    for _, row in rows:
        if row["project"] != "unattributed":
            expected[(row["period"], row["entity"], row["project"])] += row["gpu_microseconds"]

    with tempfile.TemporaryDirectory() as tmp:
        # incremental: each batch lands just before the close of its step (late ones → corrections)
        incremental = Store(Path(tmp) / "incremental")
        by_step: dict[int, list[dict]] = defaultdict(list)
        for arrives, row in rows:
            by_step[arrives].append(row)
        _close_all(incremental, by_step)

        # all at once: every row is there before the first close
        at_once = Store(Path(tmp) / "at-once")
        _close_all(at_once, {0: [row for _, row in rows]})

        inc_micro, inc_amount = _billed(incremental)
        one_micro, one_amount = _billed(at_once)
        assert inc_micro == dict(expected)
        assert one_micro == dict(expected)
        assert inc_amount == one_amount

        # compliance of each month counts what had arrived by its close (unattributed included)
        for step, period in enumerate(CLOSES):
            arrived = sum(
                r["gpu_microseconds"] for a, r in rows if a <= step and r["period"] == period
            )
            national = ledger(at_once, "compliance", period, "entity = 'ALL'")
            reported = ledger(incremental, "compliance", period, "entity = 'ALL'")
            assert sum(Decimal(r["reported_gpu_hours"]) for r in reported) == _hours(arrived)
            all_rows = sum(r["gpu_microseconds"] for _, r in rows if r["period"] == period)
            assert sum(Decimal(r["reported_gpu_hours"]) for r in national) == _hours(all_rows)

        # re-closing every month changes no byte
        before = {p: incremental.read_bytes(incremental.path(f"ledgers/billing/period={p}/billing.parquet")) for p in CLOSES}
        reg = golden_registry()
        for period in CLOSES:
            assert close_month(incremental, reg, period).already_closed
        after = {p: incremental.read_bytes(incremental.path(f"ledgers/billing/period={p}/billing.parquet")) for p in CLOSES}
        assert before == after


def _hours(micro: int) -> Decimal:
    return (Decimal(micro) / Decimal(3_600_000_000)).quantize(Decimal("0.000001"))


gpu_hour_rows = st.lists(
    st.tuples(
        st.integers(0, 3),  # GPU
        st.integers(0, 47),  # hour of 2026-11-01/02 (KST)
        st.integers(0, 2),  # device (MIG instance) on that GPU
        st.integers(1, 2_400_000_000),  # µs the device reports in that hour
    ),
    min_size=1,
    max_size=60,
    unique_by=lambda t: (t[0], t[1], t[2]),  # one row per device and hour, as usage_hourly holds
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(gpu_hour_rows)
# two devices of one GPU-hour: 121 µs over the hour (past the 120 µs slack of 120 events: a
# breach, billed the hour) and 1 µs over (within the slack: billed as reported, no breach)
@example([(1, 0, 0, 1_841_870_761), (1, 0, 1, 1_758_129_360)])
@example([(1, 0, 0, 1_841_870_759), (1, 0, 1, 1_758_129_242)])
def test_wall_clock_check_finds_exactly_the_oversubscribed_gpu_hours(spec: list[tuple]) -> None:
    """Invariant 2: the hash-and-sort check of the close agrees with a plain sum per GPU-hour."""
    from accounting.usage import scan_month

    rows = []
    expected: dict[tuple[int, int], int] = defaultdict(int)
    events: dict[tuple[int, int], int] = defaultdict(int)
    for gpu, hour, device, micro in spec:
        stamp = (datetime(2026, 10, 31, 15, tzinfo=UTC) + timedelta(hours=hour)).strftime("%Y-%m-%dT%H:%M")
        row = usage(stamp, "gov", "snu-llm", "NVIDIA B200", f"GPU-{gpu}", gpu_us=micro, device_uuid=f"MIG-{gpu}-{device}")
        rows.append(row)
        expected[(gpu, hour)] += micro
        events[(gpu, hour)] += row["events"]
    # the rule, plainly: a GPU-hour over the hour by more than the rounding slack (one µs per
    # event) is a breach and is billed exactly the hour; within the slack it is billed as reported
    breached = {key for key, micro in expected.items() if micro > 3_600_000_000 + events[key]}
    over = len(breached)
    billed = sum(3_600_000_000 if key in breached else micro for key, micro in expected.items())
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(tmp)
        write_usage(store, rows, "b1")
        hourly, oversubscribed = scan_month(store, "2026-11")
        assert int(oversubscribed["oversubscribed_gpu_hours"].sum() or 0) == over
        assert int(hourly["gpu_microseconds"].sum()) == billed
