"""Golden compliance months, worked out by hand (given / when / then), read back with DuckDB.

The golden registry gives gov and samsung 2 B200 each; November has 30 KST days, so each
holds a capacity of 2 × 30 × 24 = 1,440 GPU-hours.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from acct_given import (
    HOUR_US,
    golden_registry,
    hours,
    ledger,
    quarantined,
    usage,
    write_quarantine,
    write_raw_ids,
    write_usage,
)

from accounting.close import close_month
from storage.dataset import Store

pytestmark = pytest.mark.unit

B200 = "NVIDIA B200"


def _row(store: Store, entity: str, period: str = "2026-11") -> dict:
    [row] = ledger(store, "compliance", period, f"entity = '{entity}' and gpu_model = '{B200}'")
    return row


def test_silent_node_shows_as_unreported_hours_and_low_coverage(tmp_path: Path) -> None:
    # Given gov's GPU-1 reports all 720 h of November (KST) at 50 % busy,
    #   and GPU-2's node is silent except for 120 h (fully busy)
    store = Store(tmp_path)
    rows = hours("2026-10-31T15:00", 720, entity="gov", project="snu-llm", gpu_model=B200, gpu_uuid="GPU-1",
                 busy_us=HOUR_US // 2)
    rows += hours("2026-11-01T00:00", 120, entity="gov", project="snu-llm", gpu_model=B200, gpu_uuid="GPU-2")
    write_usage(store, rows, "b1")

    # When November is closed
    close_month(store, golden_registry(), "2026-11")

    # Then capacity 1,440; reported 840; busy 360 + 120 = 480; idle 360; unreported 600;
    #   utilisation 480/840 = 0.571429; coverage 840/1440 = 0.583333 < 0.90 → low_coverage
    gov = _row(store, "gov")
    assert gov["allocated_gpus"] == 2
    assert gov["capacity_gpu_hours"] == Decimal("1440.000000")
    assert gov["reported_gpu_hours"] == Decimal("840.000000")
    assert gov["busy_gpu_hours"] == Decimal("480.000000")
    assert gov["idle_gpu_hours"] == Decimal("360.000000")
    assert gov["unreported_gpu_hours"] == Decimal("600.000000")
    assert gov["utilisation"] == Decimal("0.571429")
    assert gov["coverage"] == Decimal("0.583333")
    assert gov["breaches"] == ["low_coverage"]
    # And samsung, allocated but entirely silent: all 1,440 h unreported, utilisation undefined
    samsung = _row(store, "samsung")
    assert samsung["unreported_gpu_hours"] == Decimal("1440.000000")
    assert samsung["utilisation"] is None
    assert samsung["coverage"] == Decimal("0.000000")


def test_under_use_below_threshold(tmp_path: Path) -> None:
    # Given both gov GPUs report every hour of November but are busy 20 % of the time
    store = Store(tmp_path)
    rows = []
    for gpu in ("GPU-1", "GPU-2"):
        rows += hours("2026-10-31T15:00", 720, entity="gov", project="snu-llm", gpu_model=B200, gpu_uuid=gpu,
                      busy_us=HOUR_US // 5)
    write_usage(store, rows, "b1")
    close_month(store, golden_registry(), "2026-11")
    # Then coverage 1.0 (no low_coverage) and utilisation 0.2 < 0.30 → under_use
    gov = _row(store, "gov")
    assert gov["coverage"] == Decimal("1.000000")
    assert gov["utilisation"] == Decimal("0.200000")
    assert gov["unreported_gpu_hours"] == Decimal("0.000000")
    assert gov["breaches"] == ["under_use"]


def test_unregistered_project_in_quarantine_is_counted_not_billed_and_replay_clears_it(tmp_path: Path) -> None:
    # Given two refused events of gov: 'mystery-lab' (unknown project, 60 s) and one of samsung
    #   that claims gov's project (project_of_other_entity, 30 s), plus an unknown entity 'lg' (60 s)
    store = Store(tmp_path)
    write_quarantine(
        store,
        [
            quarantined("2026-11-05T00:00:00", "unknown_project", "gov", "mystery-lab", B200, gpu_us=60_000_000, event_id="e1"),
            quarantined("2026-11-05T00:01:00", "unknown_project", "gov", "mystery-lab", B200, gpu_us=60_000_000, event_id="e2"),
            quarantined("2026-11-05T00:00:00", "project_of_other_entity", "samsung", "snu-llm", B200, gpu_us=30_000_000, event_id="e3"),
            quarantined("2026-11-05T00:00:00", "unknown_entity", "lg", "lg-exaone", B200, gpu_us=60_000_000, event_id="e4"),
        ],
        "q1",
    )
    # and the registry was amended and e2 replayed: it is in raw/ (and billed from usage) now
    write_raw_ids(store, "2026-11-05T00:01:00", ["e2"], "replay1")
    write_usage(store, [usage("2026-11-05T00:00", "gov", "snu-llm", B200, "GPU-1", gpu_us=60_000_000)], "replay1")

    # When November is closed
    close_month(store, golden_registry(), "2026-11")

    # Then gov: 60 s = 0.016667 h still quarantined (e1), unregistered_project;
    #   samsung: 30 s = 0.008333 h, unregistered_project; 'lg' gets its own row, unregistered_entity,
    #   allocated 0; the national roll-up carries 150 s = 0.041667 h and both breaches
    assert _row(store, "gov")["quarantined_gpu_hours"] == Decimal("0.016667")
    assert "unregistered_project" in _row(store, "gov")["breaches"]
    assert _row(store, "samsung")["quarantined_gpu_hours"] == Decimal("0.008333")
    assert "unregistered_project" in _row(store, "samsung")["breaches"]
    lg = _row(store, "lg")
    assert (lg["allocated_gpus"], lg["quarantined_gpu_hours"], lg["breaches"]) == (0, Decimal("0.016667"), ["unregistered_entity"])
    national = _row(store, "ALL")
    assert national["quarantined_gpu_hours"] == Decimal("0.041667")
    assert {"unregistered_entity", "unregistered_project"} <= set(national["breaches"])
    # And nothing quarantined is billed: the only line is the replayed minute of snu-llm
    lines = ledger(store, "billing", "2026-11")
    assert [(r["project"], r["gpu_microseconds"]) for r in lines] == [("snu-llm", 60_000_000)]


def test_over_allocation_and_oversubscribed_gpu(tmp_path: Path) -> None:
    # Given samsung (2 B200 allocated) reports 3 distinct GPUs in the hour 2026-11-07 03:00 UTC,
    #   and gov's GPU-1 has two devices reporting 40 + 30 min of the same hour (70 min > 60)
    store = Store(tmp_path)
    rows = [usage("2026-11-07T03:00", "samsung", "samsung-foundry-ai", B200, f"GPU-S{i}") for i in range(3)]
    rows += [
        usage("2026-11-07T03:00", "gov", "snu-llm", B200, "GPU-1", gpu_us=2_400_000_000, device_uuid="MIG-1"),
        usage("2026-11-07T03:00", "gov", "snu-llm", B200, "GPU-1", gpu_us=1_800_000_000, device_uuid="MIG-2"),
    ]
    write_usage(store, rows, "b1")

    close_month(store, golden_registry(), "2026-11")

    # Then samsung breaches over_allocation (3 GPU-h in an hour with 2 allocated);
    #   gov breaches gpu_oversubscribed (but not over_allocation: 70 min ≤ 2 GPU-h)
    assert "over_allocation" in _row(store, "samsung")["breaches"]
    assert "gpu_oversubscribed" not in _row(store, "samsung")["breaches"]
    gov = _row(store, "gov")
    assert "gpu_oversubscribed" in gov["breaches"]
    assert "over_allocation" not in gov["breaches"]
    assert {"over_allocation", "gpu_oversubscribed"} <= set(_row(store, "ALL")["breaches"])


def test_1500_utc_on_the_last_day_belongs_to_the_next_kst_month(tmp_path: Path) -> None:
    # Given gov's GPU-1 reports 14:00 and 15:00 UTC on 2026-11-30 (23:00 KST on the 30th and
    #   00:00 KST on 1 December)
    store = Store(tmp_path)
    rows = hours("2026-11-30T14:00", 2, entity="gov", project="snu-llm", gpu_model=B200, gpu_uuid="GPU-1")
    write_usage(store, rows, "b1")

    # When November and December are closed
    reg = golden_registry()
    close_month(store, reg, "2026-11")
    close_month(store, reg, "2026-12")

    # Then each month has exactly one GPU-hour; December's capacity is 2 × 31 × 24 = 1,488 h
    assert _row(store, "gov", "2026-11")["reported_gpu_hours"] == Decimal("1.000000")
    assert _row(store, "gov", "2026-12")["reported_gpu_hours"] == Decimal("1.000000")
    assert _row(store, "gov", "2026-12")["capacity_gpu_hours"] == Decimal("1488.000000")
    [dec_line] = ledger(store, "billing", "2026-12")
    assert (dec_line["charge_class"], dec_line["rate_krw_per_gpu_hour"]) == ("usage", Decimal("2100.00"))


def test_national_roll_up_sums_the_entities(tmp_path: Path) -> None:
    store = Store(tmp_path)
    rows = hours("2026-11-01T00:00", 10, entity="gov", project="snu-llm", gpu_model=B200, gpu_uuid="GPU-1")
    rows += hours("2026-11-01T00:00", 4, entity="samsung", project="unattributed", gpu_model=B200, gpu_uuid="GPU-2",
                  busy_us=0)
    write_usage(store, rows, "b1")
    close_month(store, golden_registry(), "2026-11")
    national = _row(store, "ALL")
    # 2 + 2 GPUs; capacity 2,880 h; reported 14 h of which 4 unattributed; busy 10 h
    assert national["allocated_gpus"] == 4
    assert national["capacity_gpu_hours"] == Decimal("2880.000000")
    assert national["reported_gpu_hours"] == Decimal("14.000000")
    assert national["unattributed_gpu_hours"] == Decimal("4.000000")
    assert national["busy_gpu_hours"] == Decimal("10.000000")
    assert national["utilisation"] == Decimal("0.714286")
