"""Invariant 2 in billing: over-reported GPU time is capped at the wall clock and named.

Events go through the real stream pipeline (``raw/`` and ``usage_hourly/``), then a close;
every figure below is worked out by hand (given / when / then). Samsung's B200 rate is
4,500 KRW per GPU-hour; gov's is 4,000 with 50 % off for snu-llm (university) and 30 % off
for upstage-pretrain (start-up) in the first half of November. Truncation below one won.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from acct_given import golden_registry, hours, ledger, write_usage

from accounting.close import close_month
from accounting.wallclock import share
from storage.dataset import Store
from storage.rollup import roll_up
from streams.pipeline import BatchProcessor
from streams.schema import make_event_id
from streams.validate import Accounts

pytestmark = pytest.mark.unit

B200 = "NVIDIA B200"
MINUTE = "2026-11-10T03:00:00Z"
ACCOUNTS = Accounts(
    entities=frozenset({"gov", "samsung"}),
    project_entity={"snu-llm": "gov", "upstage-pretrain": "gov", "samsung-foundry-ai": "samsung"},
)


def event(gpu: str, seconds: float, *, device: str | None = None, node: str = "n1", fraction: float = 1.0,
          entity: str = "samsung", project: str = "samsung-foundry-ai", start: str = MINUTE) -> dict:
    device = device or gpu
    end = (datetime.fromisoformat(start) + timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "schema_version": 1, "event_id": make_event_id(node, device, start), "site": "dc1", "node": node,
        "gpu_uuid": gpu, "device_uuid": device, "gpu_model": B200,
        "mig_profile": None if device == gpu else "3g.90gb", "gpu_fraction": fraction,
        "entity": entity, "project": project, "job_id": None, "interval_start": start, "interval_end": end,
        "gpu_seconds": seconds, "busy_gpu_seconds": seconds / 2, "energy_joules": None,
        "samples": 6, "expected_samples": 6, "flags": [],
    }


def consume(store: Store, *events: dict) -> None:
    result = BatchProcessor(store, ACCOUNTS).process([("test", "\n".join(json.dumps(e) for e in events).encode())])
    assert result.accepted == len(events), result
    roll_up(store)  # usage_hourly from raw, as the scheduler and the close CLI do


def billed(store: Store, period: str = "2026-11") -> dict[tuple[str, str], tuple[int, Decimal]]:
    return {
        (r["entity"], r["project"]): (r["gpu_microseconds"], r["amount_krw"])
        for r in ledger(store, "billing", period)
    }


def compliance(store: Store, entity: str) -> dict:
    [row] = ledger(store, "compliance", "2026-11", f"entity = '{entity}' and gpu_model = '{B200}'")
    return row


@pytest.mark.parametrize(
    ("case", "events", "expected"),
    [
        # given three 0.5 MIG slices of GPU-A, 30 s each in one minute (90 s > 60 s)
        # then 60 s shared in proportion: 20 s each; 60,000,000 µs × 4500 / 3.6e9 = 75 KRW
        ("three half slices", [
            event("GPU-A", 30.0, device=f"MIG-A{i}", fraction=0.5) for i in range(3)
        ], {("samsung", "samsung-foundry-ai"): (60_000_000, Decimal("75"))}),
        # given GPU-B whole (60 s, samsung) and its own half slice (30 s, gov/snu-llm) in one minute
        # then 40 s to samsung (50 KRW) and 20 s to snu-llm (20 s × 2000 KRW/h = 11.1 → 11 KRW)
        ("whole GPU and its own slice", [
            event("GPU-B", 60.0),
            event("GPU-B", 30.0, device="MIG-B1", fraction=0.5, entity="gov", project="snu-llm"),
        ], {("samsung", "samsung-foundry-ai"): (40_000_000, Decimal("50")),
            ("gov", "snu-llm"): (20_000_000, Decimal("11"))}),
        # given GPU-C reported whole by two nodes in the same minute (120 s)
        # then one minute is billed: 75 KRW
        ("one gpu_uuid from two nodes", [
            event("GPU-C", 60.0, node="n1"), event("GPU-C", 60.0, node="n2"),
        ], {("samsung", "samsung-foundry-ai"): (60_000_000, Decimal("75"))}),
        # given GPU-D's slices claim 25 s (samsung), 25 s (snu-llm) and 20 s (upstage) of a minute
        # then 60 s × 25/70 = 21,428,571.43 µs, 60 s × 20/70 = 17,142,857.14 µs; the one µs the
        #   floors leave goes to a largest remainder (a 25-s claim): the shares sum to 60 s exactly
        ("uneven shares, exact to the microsecond", [
            event("GPU-D", 25.0, device="MIG-D1", fraction=0.5),
            event("GPU-D", 25.0, device="MIG-D2", fraction=0.5, entity="gov", project="snu-llm"),
            event("GPU-D", 20.0, device="MIG-D3", fraction=0.5, entity="gov", project="upstage-pretrain"),
        ], {("gov", "upstage-pretrain"): (17_142_857, Decimal("13"))}),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_over_reported_gpu_time_is_billed_at_most_the_wall_clock(tmp_path: Path, case, events, expected) -> None:
    store = Store(tmp_path)
    consume(store, *events)

    # when November is closed
    close_month(store, golden_registry(), "2026-11")

    # then the physical GPU is billed no more than the minute, as worked out above
    lines = billed(store)
    for owner, figures in expected.items():
        assert lines[owner] == figures, case
    assert sum(us for us, _ in lines.values()) == 60_000_000
    # and the compliance ledger names the breach for every entity that had a part in it,
    #   and counts only the capped time as reported (what was billed plus nothing)
    for entity in {e["entity"] for e in events}:
        row = compliance(store, entity)
        assert "gpu_oversubscribed" in row["breaches"], (case, entity)
        billed_us = sum(us for (ent, _), (us, _) in lines.items() if ent == entity)
        assert row["reported_gpu_hours"] == (Decimal(billed_us) / Decimal(3_600_000_000)).quantize(Decimal("0.000001"))
        assert row["busy_gpu_hours"] <= row["reported_gpu_hours"]
    assert "gpu_oversubscribed" in compliance(store, "ALL")["breaches"]


def test_uneven_shares_give_the_leftover_microsecond_to_one_largest_remainder(tmp_path: Path) -> None:
    store = Store(tmp_path)
    consume(
        store,
        event("GPU-D", 25.0, device="MIG-D1", fraction=0.5),
        event("GPU-D", 25.0, device="MIG-D2", fraction=0.5, entity="gov", project="snu-llm"),
        event("GPU-D", 20.0, device="MIG-D3", fraction=0.5, entity="gov", project="upstage-pretrain"),
    )
    close_month(store, golden_registry(), "2026-11")
    lines = billed(store)
    big = sorted([lines[("samsung", "samsung-foundry-ai")][0], lines[("gov", "snu-llm")][0]])
    assert big == [21_428_571, 21_428_572]


@pytest.mark.parametrize(
    ("case", "events"),
    [
        # seven 1/7 slices, a full minute each: 7 × round(60/7 s) = 60,000,003 µs, honest rounding
        ("seven 1/7 slices", [event("GPU-E", 60 / 7, device=f"MIG-E{i}", fraction=1 / 7) for i in range(7)]),
        # a 3/7 and a 4/7 slice
        ("3g + 4g", [event("GPU-F", 60 * 3 / 7, device="MIG-F1", fraction=3 / 7),
                     event("GPU-F", 60 * 4 / 7, device="MIG-F2", fraction=4 / 7)]),
        # the same GPU's whole device in two different minutes (no overlap)
        ("two minutes", [event("GPU-G", 60.0), event("GPU-G", 60.0, start="2026-11-10T03:01:00Z")]),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_honest_sharing_of_a_gpu_is_billed_in_full_and_not_a_breach(tmp_path: Path, case, events) -> None:
    store = Store(tmp_path)
    consume(store, *events)
    close_month(store, golden_registry(), "2026-11")
    [(us, _)] = billed(store).values()
    assert us == sum(round(e["gpu_seconds"] * 1_000_000) for e in events), case
    assert "gpu_oversubscribed" not in compliance(store, "samsung")["breaches"]


def test_an_hour_over_the_hour_without_raw_rows_is_capped_at_the_hour(tmp_path: Path) -> None:
    # given only usage_hourly (no raw): gov's GPU-1 has two devices claiming 40 + 30 min of one hour
    from acct_given import usage

    store = Store(tmp_path)
    write_usage(store, [
        usage("2026-11-07T03:00", "gov", "snu-llm", B200, "GPU-1", gpu_us=2_400_000_000, device_uuid="MIG-1"),
        usage("2026-11-07T03:00", "gov", "upstage-pretrain", B200, "GPU-1", gpu_us=1_800_000_000, device_uuid="MIG-2"),
    ], "b1")
    # when closed
    close_month(store, golden_registry(), "2026-11")
    # then the hour is shared 4:3 → 2,057,142,857 + 1,542,857,143 µs = exactly one hour
    lines = billed(store)
    assert lines[("gov", "snu-llm")][0] + lines[("gov", "upstage-pretrain")][0] == 3_600_000_000
    assert lines[("gov", "snu-llm")][0] == 2_057_142_857
    assert "gpu_oversubscribed" in compliance(store, "gov")["breaches"]


def test_one_row_over_the_hour_is_capped_at_the_hour(tmp_path: Path) -> None:
    # given only usage_hourly: gov's GPU-2 has ONE row claiming 70 minutes of one hour (60 events,
    #   so 3,600,000,060 µs is the most the rounding slack allows), beside an honest full hour
    from acct_given import usage

    store = Store(tmp_path)
    write_usage(store, [
        usage("2026-11-07T03:00", "gov", "snu-llm", B200, "GPU-2", gpu_us=4_200_000_000),
        usage("2026-11-07T03:00", "gov", "snu-llm", B200, "GPU-3"),
    ], "b1")
    # when closed
    close_month(store, golden_registry(), "2026-11")
    # then GPU-2 is billed one hour, not seventy minutes (the screen must let a lone row through)
    assert billed(store)[("gov", "snu-llm")][0] == 2 * 3_600_000_000
    assert "gpu_oversubscribed" in compliance(store, "gov")["breaches"]


def test_a_late_over_report_of_a_closed_month_is_capped_in_the_correction_too(tmp_path: Path) -> None:
    # given November closed with GPU-C reported once (one minute, 75 KRW)
    store = Store(tmp_path)
    consume(store, event("GPU-C", 60.0, node="n1"))
    close_month(store, golden_registry(), "2026-11")
    # when a second node reports the same GPU and minute late, and December is closed
    consume(store, event("GPU-C", 60.0, node="n2"))
    write_usage(store, hours("2026-12-05T03:00", 1, entity="samsung", project="samsung-foundry-ai",
                             gpu_model=B200, gpu_uuid="GPU-Z"), "dec")
    close_month(store, golden_registry(), "2026-12")
    # then no correction bills the extra minute: the GPU still had only one
    corrections = [r for r in ledger(store, "billing", "2026-12") if r["charge_class"] == "correction"]
    assert corrections == []


def test_share_is_exact_and_order_free() -> None:
    assert share(60, [30, 30, 30], ["a", "b", "c"]) == [20, 20, 20]
    assert share(60, [10, 20], ["a", "b"]) == [10, 20]  # fits: unchanged
    assert share(60, [61, 1], ["a", "b"], slack=2) == [61, 1]  # within the rounding slack
    assert sum(share(3_600_000_000, [7, 11, 13, 2**40], ["w", "x", "y", "z"])) == 3_600_000_000
    assert share(10, [5, 5, 5], ["c", "a", "b"]) == [3, 4, 3]  # the leftover goes by name on a tie
