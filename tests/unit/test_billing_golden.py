"""Golden billing months, worked out by hand (given / when / then), read back with DuckDB."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest
from acct_given import HOUR_US, golden_registry, hours, ledger, total, usage, write_usage

from accounting.close import close_month
from accounting.errors import CloseError
from storage.dataset import Store

pytestmark = pytest.mark.unit

B200 = "NVIDIA B200"


def test_rate_change_mid_month_splits_the_line_at_the_kst_day(tmp_path: Path) -> None:
    # Given gov's B200 list rate is 4000 KRW/GPU-h to 2026-11-15 and 4200 from 2026-11-16 (KST),
    #   snu-llm (university, 50 % off) uses one B200:
    #   - 10 h from 2026-11-15 01:00 UTC (10:00-20:00 KST on the 15th)       → old rate 2000
    #   -  1 h at 2026-11-15 15:00 UTC (= 2026-11-16 00:00 KST)               → new rate 2100
    #   -  6 h from 2026-11-16 01:00 UTC (the 16th in Seoul)                  → new rate 2100
    store = Store(tmp_path)
    rows = hours("2026-11-15T01:00", 10, entity="gov", project="snu-llm", gpu_model=B200, gpu_uuid="GPU-1")
    rows += hours("2026-11-15T15:00", 1, entity="gov", project="snu-llm", gpu_model=B200, gpu_uuid="GPU-1")
    rows += hours("2026-11-16T01:00", 6, entity="gov", project="snu-llm", gpu_model=B200, gpu_uuid="GPU-1")
    write_usage(store, rows, "b1")

    # When November is closed
    close_month(store, golden_registry(), "2026-11")

    # Then two usage lines, one per rate segment, each priced and rounded once:
    #   10 h × 2000 = 20,000 KRW (rate_from 11-01, rate_to 11-15)
    #    7 h × 2100 = 14,700 KRW (rate_from 11-16, rate_to 11-30)
    lines = ledger(store, "billing", "2026-11")
    assert [
        (r["rate_from"], r["rate_to"], r["gpu_hours"], r["list_rate_krw_per_gpu_hour"], r["discount_percent"],
         r["rate_krw_per_gpu_hour"], r["amount_krw"], r["charge_class"], r["project_class"])
        for r in lines
    ] == [
        (date(2026, 11, 1), date(2026, 11, 15), Decimal("10.000000"), Decimal("4000.00"), Decimal("50.00"),
         Decimal("2000.00"), Decimal("20000"), "usage", "university"),
        (date(2026, 11, 16), date(2026, 11, 30), Decimal("7.000000"), Decimal("4200.00"), Decimal("50.00"),
         Decimal("2100.00"), Decimal("14700"), "usage", "university"),
    ]
    assert total(lines, "amount_krw") == Decimal("34700")


def test_mig_fractions_are_summed_exactly_and_rounded_once_per_line(tmp_path: Path) -> None:
    # Given one B200 of samsung split into MIG instances used by samsung-foundry-ai for an hour:
    #   1g (1/7 of the GPU): 60 events × round(60 s × 1/7 × 1e6) = 60 × 8,571,429 = 514,285,740 µs
    #   3g (3/7 of the GPU): 60 events × round(60 s × 3/7 × 1e6) = 60 × 25,714,286 = 1,542,857,160 µs
    store = Store(tmp_path)
    write_usage(
        store,
        [
            usage("2026-11-10T03:00", "samsung", "samsung-foundry-ai", B200, "GPU-9", gpu_us=514_285_740,
                  device_uuid="MIG-a", fraction=1 / 7, mig_profile="1g.23gb"),
            usage("2026-11-10T03:00", "samsung", "samsung-foundry-ai", B200, "GPU-9", gpu_us=1_542_857_160,
                  device_uuid="MIG-b", fraction=3 / 7, mig_profile="3g.90gb"),
        ],
        "b1",
    )

    # When November is closed
    close_month(store, golden_registry(), "2026-11")

    # Then one line: 2,057,142,900 µs = 0.571428583 h → shown as 0.571429 GPU-h;
    #   amount = 2,057,142,900 × 4500 / 3.6e9 = 2571.428625 → truncated once: 2,571 KRW
    #   (rounding each instance first would give 642 + 1928 = 2,570).
    [line] = ledger(store, "billing", "2026-11")
    assert line["gpu_microseconds"] == 2_057_142_900
    assert line["gpu_hours"] == Decimal("0.571429")
    assert line["amount_krw"] == Decimal("2571")
    assert line["discount_percent"] == Decimal("0.00")
    [row] = ledger(store, "compliance", "2026-11", "entity = 'samsung'")
    assert "gpu_oversubscribed" not in row["breaches"]  # 4/7 of the GPU-hour: within wall clock


@pytest.mark.parametrize(
    ("rule", "amounts"),
    [("truncate", ("2571", "2572")), ("half_up", ("2572", "2573")), ("half_even", ("2572", "2572"))],
)
def test_rounding_rule_of_the_registry_applies(tmp_path: Path, rule: str, amounts: tuple[str, str]) -> None:
    # Given snu-llm (university, 50 % off) either side of gov's rate change on 16 November:
    #   4,628,700,000 µs × 2,000 KRW/h = 2,571.5 KRW exactly (odd whole part)
    #   4,410,000,000 µs × 2,100 KRW/h = 2,572.5 KRW exactly (even whole part)
    # Then truncate 2571 + 2572 = 5143, half_up 2572 + 2573 = 5145, half_even 2572 + 2572 = 5144:
    #   a different total for each rule, so a rule applied wrongly (or not at all) is caught
    store = Store(tmp_path)
    rows = [
        usage("2026-11-10T03:00", "gov", "snu-llm", B200, "GPU-1"),
        usage("2026-11-10T04:00", "gov", "snu-llm", B200, "GPU-1", gpu_us=1_028_700_000),
        usage("2026-11-20T03:00", "gov", "snu-llm", B200, "GPU-1"),
        usage("2026-11-20T04:00", "gov", "snu-llm", B200, "GPU-1", gpu_us=810_000_000),
    ]
    write_usage(store, rows, "b1")
    close_month(store, golden_registry(rule), "2026-11")
    lines = sorted(ledger(store, "billing", "2026-11"), key=lambda line: line["rate_from"])
    assert [(line["gpu_microseconds"], line["rate_krw_per_gpu_hour"]) for line in lines] == [
        (4_628_700_000, Decimal("2000.00")), (4_410_000_000, Decimal("2100.00"))]
    assert tuple(str(line["amount_krw"]) for line in lines) == amounts
    assert total(lines, "amount_krw") == {"truncate": 5143, "half_up": 5145, "half_even": 5144}[rule]


def test_half_a_won_is_where_the_rules_differ(tmp_path: Path) -> None:
    # Given 1,200,000 µs (1/3000 h) × 4500 = 1.5 KRW exactly
    results = {}
    for rule in ("truncate", "half_up", "half_even"):
        store = Store(tmp_path / rule)
        write_usage(store, [usage("2026-11-10T03:00", "samsung", "samsung-foundry-ai", B200, "GPU-9", gpu_us=1_200_000)], "b1")
        close_month(store, golden_registry(rule), "2026-11")
        [line] = ledger(store, "billing", "2026-11")
        results[rule] = line["amount_krw"]
    # Then truncate → 1, half_up → 2, half_even → 2 (to the even neighbour of 1.5)
    assert results == {"truncate": Decimal("1"), "half_up": Decimal("2"), "half_even": Decimal("2")}


def test_startup_discount_and_unattributed_usage_never_billed(tmp_path: Path) -> None:
    # Given upstage-pretrain (startup, 30 % off 4000 → 2800) uses 3 GPU-h on 2026-11-02,
    #   and 5 GPU-h of gov's B200 are unattributed
    store = Store(tmp_path)
    rows = hours("2026-11-02T00:00", 3, entity="gov", project="upstage-pretrain", gpu_model=B200, gpu_uuid="GPU-1")
    rows += hours("2026-11-02T00:00", 5, entity="gov", project="unattributed", gpu_model=B200, gpu_uuid="GPU-2")
    write_usage(store, rows, "b1")

    close_month(store, golden_registry(), "2026-11")

    # Then one line of 3 h × 2800 = 8,400 KRW; the unattributed 5 h appear only in compliance
    lines = ledger(store, "billing", "2026-11")
    assert [(r["project"], r["rate_krw_per_gpu_hour"], r["amount_krw"]) for r in lines] == [
        ("upstage-pretrain", Decimal("2800.00"), Decimal("8400"))
    ]
    [gov] = ledger(store, "compliance", "2026-11", "entity = 'gov'")
    assert gov["attributed_gpu_hours"] == Decimal("3.000000")
    assert gov["unattributed_gpu_hours"] == Decimal("5.000000")
    assert gov["reported_gpu_hours"] == Decimal("8.000000")


def test_late_event_after_close_becomes_a_correction_and_restating_twice_never_double_counts(tmp_path: Path) -> None:
    # Given November closed with 2 GPU-h of snu-llm on 2026-11-03 (2 × 2000 = 4,000 KRW)
    store = Store(tmp_path)
    reg = golden_registry()
    write_usage(store, hours("2026-11-03T00:00", 2, entity="gov", project="snu-llm", gpu_model=B200, gpu_uuid="GPU-1"), "b1")
    close_month(store, reg, "2026-11")
    november = store.read_bytes(store.path("ledgers/billing/period=2026-11/billing.parquet"))

    # When a late hour for 2026-11-03 arrives, plus 1 h of December usage, and December closes
    write_usage(store, hours("2026-11-03T05:00", 1, entity="gov", project="snu-llm", gpu_model=B200, gpu_uuid="GPU-1"), "late1")
    write_usage(store, hours("2026-12-02T00:00", 1, entity="gov", project="snu-llm", gpu_model=B200, gpu_uuid="GPU-1"), "dec")
    again = close_month(store, reg, "2026-11")
    close_month(store, reg, "2026-12")

    # Then November's file is untouched, closing it again said so,
    #   and December has its usage line (1 h × 2100) and a correction of November (+1 h × 2000)
    assert again.already_closed
    assert store.read_bytes(store.path("ledgers/billing/period=2026-11/billing.parquet")) == november
    december = ledger(store, "billing", "2026-12")
    assert [(r["charge_class"], r["corrects_period"], r["gpu_hours"], r["amount_krw"]) for r in december] == [
        ("correction", "2026-11", Decimal("1.000000"), Decimal("2000")),
        ("usage", None, Decimal("1.000000"), Decimal("2100")),
    ]

    # When another late hour of November arrives and January closes
    write_usage(store, hours("2026-11-04T00:00", 1, entity="gov", project="snu-llm", gpu_model=B200, gpu_uuid="GPU-1"), "late2")
    close_month(store, reg, "2027-01")

    # Then January corrects only the new hour: over all ledgers November is billed 4 h = 8,000 KRW
    january = ledger(store, "billing", "2027-01")
    assert [(r["charge_class"], r["corrects_period"], r["gpu_hours"], r["amount_krw"]) for r in january] == [
        ("correction", "2026-11", Decimal("1.000000"), Decimal("2000")),
    ]
    november_all = [
        r for p in ("2026-11", "2026-12", "2027-01") for r in ledger(store, "billing", p)
        if (r["corrects_period"] or r["period"]) == "2026-11"
    ]
    assert total(november_all, "gpu_microseconds") == 4 * HOUR_US
    assert total(november_all, "amount_krw") == Decimal("8000")


def test_correction_amount_restates_the_rounded_total_not_the_delta(tmp_path: Path) -> None:
    # Given 0.3 GPU-h at 4500 (1350.0 KRW) billed in November; late 0.0001 h (0.45 KRW) arrives
    store = Store(tmp_path)
    reg = golden_registry()
    write_usage(store, [usage("2026-11-10T03:00", "samsung", "samsung-foundry-ai", B200, "GPU-9", gpu_us=1_080_000_000)], "b1")
    close_month(store, reg, "2026-11")
    write_usage(store, [usage("2026-11-10T03:00", "samsung", "samsung-foundry-ai", B200, "GPU-9", gpu_us=360_000, device_uuid="MIG-x")], "late")
    write_usage(store, [usage("2026-11-10T04:00", "samsung", "samsung-foundry-ai", B200, "GPU-9", gpu_us=360_000, device_uuid="MIG-x")], "late2")

    # When December closes
    close_month(store, reg, "2026-12")

    # Then the restated total is 1,080,720,000 µs → 1350.9 KRW → 1350 (truncate): the correction
    #   carries +720,000 µs and 0 KRW, so the two lines sum to what one close would have billed.
    [line] = ledger(store, "billing", "2026-12")
    assert (line["charge_class"], line["gpu_microseconds"], line["amount_krw"]) == ("correction", 720_000, Decimal("0"))


def test_usage_without_a_rate_stops_the_close_listing_every_gap(tmp_path: Path) -> None:
    # Given usage of a model no rate card covers (GB200 at gov and samsung)
    store = Store(tmp_path)
    rows = [
        usage("2026-11-10T03:00", "gov", "snu-llm", "NVIDIA GB200", "GPU-7"),
        usage("2026-11-12T03:00", "samsung", "samsung-foundry-ai", "NVIDIA GB200", "GPU-8"),
    ]
    write_usage(store, rows, "b1")
    # When November is closed, then the close refuses, naming both gaps, and writes nothing
    with pytest.raises(CloseError) as caught:
        close_month(store, golden_registry(), "2026-11")
    assert "gov × NVIDIA GB200 on 2026-11-10" in str(caught.value)
    assert "samsung × NVIDIA GB200 on 2026-11-12" in str(caught.value)
    assert not store.exists(store.path("ledgers/billing/period=2026-11/billing.parquet"))
