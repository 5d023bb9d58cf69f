"""The registry: the sample loads as docs/architecture.md describes it; every mistake is reported at once."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest

from accounting.errors import RegistryError
from accounting.registry import RoundingRule, load_registry, loads_registry

pytestmark = pytest.mark.unit

SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "registry.toml"

MINIMAL = """
[billing]
rounding = "truncate"

[entities.gov]
state_pool = true
[[entities.gov.allocations]]
gpu_model = "NVIDIA B200"
count = 8
effective_from = 2026-01-01

[projects.snu-llm]
entity = "gov"
class = "university"

[[rates]]
entity = "gov"
gpu_model = "NVIDIA B200"
krw_per_gpu_hour = 3900
effective_from = 2026-01-01
discounts = { university = 50 }
"""


def test_sample_registry_has_the_programme_of_design_md() -> None:
    registry = load_registry(SAMPLE)
    assert sorted(registry.entities) == ["gov", "hyundai", "naver", "samsung", "skt"]
    blackwell = {
        name: sum(
            e.allocated(model, date(2026, 11, 15)) for model in ("NVIDIA B200", "NVIDIA GB200")
        )
        for name, e in registry.entities.items()
    }
    assert blackwell == {"gov": 50_000, "samsung": 50_000, "hyundai": 50_000, "skt": 50_000, "naver": 60_000}
    existing = sum(e.allocated("NVIDIA H100 80GB HBM3", date(2026, 11, 15)) for e in registry.entities.values())
    assert existing == 65_000
    assert registry.projects["snu-llm"].entity == "gov"
    assert registry.projects["snu-llm"].project_class == "university"
    assert registry.projects["upstage-pretrain"].project_class == "startup"
    assert registry.projects["etri-sovereign"].project_class == "institute"
    assert registry.projects["skt-ax"].project_class == "commercial"
    assert registry.rounding is RoundingRule.TRUNCATE
    assert registry.thresholds.under_use_below == Decimal("0.30")
    assert registry.thresholds.low_coverage_below == Decimal("0.90")


def test_state_pool_discounts_by_class_and_rates_are_exact_decimals() -> None:
    registry = load_registry(SAMPLE)
    card = registry.rate_on("gov", "NVIDIA B200", date(2026, 11, 1))
    assert card is not None
    assert card.applied_rate("university") == Decimal("1950.00")
    assert card.applied_rate("startup") == Decimal("2730.00")
    assert card.applied_rate("institute") == Decimal("2340.00")
    assert card.applied_rate("commercial") == Decimal("3900.00")
    samsung = registry.rate_on("samsung", "NVIDIA H100 80GB HBM3", date(2026, 11, 1))
    assert samsung is not None and samsung.krw_per_gpu_hour == Decimal("3100.50")


def test_effective_dated_rates_split_at_the_change() -> None:
    registry = load_registry(SAMPLE)
    segments = registry.rate_segments("gov", "NVIDIA H100 80GB HBM3", date(2026, 12, 20), date(2027, 1, 10))
    assert [(c.krw_per_gpu_hour, lo, hi) for c, lo, hi in segments] == [
        (Decimal("2800"), date(2026, 12, 20), date(2026, 12, 31)),
        (Decimal("2400"), date(2027, 1, 1), date(2027, 1, 10)),
    ]


def test_effective_dated_allocation_tranches() -> None:
    naver = load_registry(SAMPLE).entities["naver"]
    assert naver.allocated("NVIDIA GB200", date(2026, 6, 30)) == 20_000
    assert naver.allocated("NVIDIA GB200", date(2026, 7, 1)) == 40_000
    assert naver.allocated("NVIDIA GB200", date(2025, 12, 31)) == 0


def test_minimal_registry_loads() -> None:
    registry = loads_registry(MINIMAL)
    assert registry.entities["gov"].state_pool is True
    assert registry.thresholds.under_use_below == Decimal("0.30")  # default


@pytest.mark.parametrize(
    ("rule", "amount", "expected"),
    [
        ("truncate", "1949.999", "1949"),
        ("truncate", "-0.7", "0"),
        ("half_up", "2.5", "3"),
        ("half_up", "2.4999", "2"),
        ("half_even", "2.5", "2"),
        ("half_even", "3.5", "4"),
    ],
)
def test_rounding_rules_to_whole_won(rule: str, amount: str, expected: str) -> None:
    assert RoundingRule(rule).apply(Decimal(amount)) == Decimal(expected)


BROKEN = """
[billing]
rounding = "banker"

[compliance]
under_use_below = 1.5

[entities.gov]
[[entities.gov.allocations]]
gpu_model = "NVIDIA B200"
count = -5
effective_from = 2026-01-01

[[entities.gov.allocations]]
gpu_model = "NVIDIA GB200"
count = 10
effective_from = "first of january"

[[entities.gov.allocations]]
gpu_model = "NVIDIA H100 80GB HBM3"
count = 10
effective_from = 2026-01-01

[entities.ALL]

[projects.snu-llm]
entity = "gove"

[projects.unattributed]
entity = "gov"

[[rates]]
entity = "gov"
gpu_model = "NVIDIA B200"
krw_per_gpu_hour = 3900
effective_from = 2026-01-01
effective_to = 2026-06-30

[[rates]]
entity = "gov"
gpu_model = "NVIDIA B200"
krw_per_gpu_hour = 4000
effective_from = 2026-06-01

[[rates]]
entity = "gov"
gpu_model = "NVIDIA GB200"
krw_per_gpu_hour = 3333
effective_from = 2026-03-01
effective_to = 2026-02-01
discounts = { university = 33.33 }
"""


def test_every_problem_is_reported_at_once_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "registry.toml"
    path.write_text(BROKEN, encoding="utf-8")
    with pytest.raises(RegistryError) as caught:
        load_registry(path)
    err = caught.value
    assert str(path) in str(err)
    text = "\n".join(err.problems)
    expected_fragments = [
        "unknown rounding rule 'banker'",
        "under_use_below: must be between 0 and 1",
        "negative count -5",
        "bad date 'first of january'",
        "'ALL' is reserved",
        "unknown entity 'gove'",
        "'unattributed' is reserved",
        "overlaps another rate card",
        "effective_to 2026-02-01 is before effective_from 2026-03-01",
        "not exact to 0.01 KRW",
        "missing rate for allocated model 'NVIDIA H100 80GB HBM3'",
    ]
    for fragment in expected_fragments:
        assert fragment in text, fragment
    assert len(err.problems) >= len(expected_fragments)


def test_missing_file_and_bad_toml_are_registry_errors(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="file not found"):
        load_registry(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[billing\n", encoding="utf-8")
    with pytest.raises(RegistryError, match="not valid TOML"):
        load_registry(bad)


def test_rate_gap_inside_an_allocation_is_reported() -> None:
    text = MINIMAL.replace(
        "effective_from = 2026-01-01\ndiscounts",
        "effective_from = 2026-01-01\neffective_to = 2026-10-31\ndiscounts",
    )
    with pytest.raises(RegistryError, match=r"missing rate for allocated model 'NVIDIA B200' from 2026-11-01"):
        loads_registry(text)


def test_the_statement_parties_are_read_from_the_sample() -> None:
    registry = load_registry(SAMPLE)
    supplier = registry.supplier
    assert supplier is not None and supplier.party.business_number == "101-82-00013"
    assert supplier.payment_due_days == 30 and supplier.payment_account.startswith("한국은행 국고")
    gov = registry.entities["gov"].recipient
    assert (gov.business_number, gov.address) == ("305-82-00070", "세종특별자치시 도움6로 11 (sample)")
    kaist = registry.projects["kaist-vision"].recipient
    assert (kaist.name, kaist.business_number) == ("한국과학기술원 (KAIST)", "314-82-00093")


def test_a_registry_without_the_parties_is_still_valid() -> None:
    # backward compatible: every new field is optional
    text = "\n".join(
        line for line in SAMPLE.read_text().splitlines()
        if not line.startswith(("business_number", "address", "representative", "payment_", "name ="))
    ).replace("[supplier]\n", "")
    registry = loads_registry(text)
    assert registry.supplier is None and registry.entities["gov"].recipient.business_number is None


def test_every_problem_with_the_parties_is_reported_at_once() -> None:
    text = SAMPLE.read_text()
    text = text.replace('business_number = "101-82-00013"', 'business_number = "101-82-00014"')  # check digit
    text = text.replace('business_number = "305-82-00070"', 'business_number = "3058200070"')  # no dashes
    text = text.replace("payment_due_days = 30", "payment_due_days = -1\nbank = \"x\"")
    text = text.replace('address = "서울특별시 관악구 관악로 1 (sample)"', "address = 7")
    with pytest.raises(RegistryError) as caught:
        loads_registry(text, source="edited.toml")
    said = str(caught.value)
    assert "supplier.business_number: '101-82-00014' fails the 사업자등록번호 check digit" in said
    assert "entities.gov.business_number: must be a 사업자등록번호 written XXX-XX-XXXXX" in said
    assert "supplier.payment_due_days: must be a whole number of days from 0 to 365, got -1" in said
    assert "supplier: unknown key 'bank'" in said
    assert "projects.snu-llm.address: must be a non-empty string, got 7" in said
