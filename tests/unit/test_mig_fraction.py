"""The MIG ``gpu_fraction`` contract (docs/producers.md): a fraction is k/n, n the GPU's slice
count (1..8), given to within 10⁻⁶ (six decimal places, however rounded); what is stored is that k/n,
and ``gpu_seconds`` may be at most interval × k/n + 1 µs.

Given events as a producer prints them (k/n to 6..17 places, gpu_seconds rounded to the
microsecond either way), when the consumer's rules judge them, then they are accepted and
stored with the exact k/n; a fraction that is no k/n, or seconds past the bound, are refused.
"""

from __future__ import annotations

import math
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from spine_events import ACCOUNTS, event, jsonl

from streams.validate import FRACTION_TOLERANCE, check_rules, decode_messages

pytestmark = pytest.mark.unit
INTERVAL_S = 60


def judged(**fields) -> tuple[str | None, float]:
    """(reason_code, stored gpu_fraction) of one MIG event with ``fields``."""
    ev = event(device="MIG-0001-1", mig_profile="1g.23gb", busy_gpu_seconds=0.0, **fields)
    frame, early = decode_messages([("test", jsonl(ev))])
    assert not early
    row = check_rules(frame, ACCOUNTS).row(0, named=True)
    return row["reason_code"], row["gpu_fraction"]


def printed(value: Decimal, places: int, rounding: str) -> float:
    return float(value.quantize(Decimal(1).scaleb(-places), rounding=rounding))


def test_the_issue_example_one_seventh_to_six_places_is_accepted_as_one_seventh() -> None:
    assert judged(gpu_fraction=0.142857, gpu_seconds=8.571428) == (None, 1 / 7)
    assert judged(gpu_fraction=1 / 7, gpu_seconds=8.571429) == (None, 1 / 7)


slices = st.integers(1, 8).flatmap(lambda n: st.tuples(st.integers(1, n), st.just(n)))


@settings(max_examples=150, deadline=None)
@given(slices, st.integers(6, 17), st.sampled_from([ROUND_FLOOR, ROUND_CEILING]), st.sampled_from([ROUND_FLOOR, ROUND_CEILING]))
def test_k_of_n_printed_to_six_places_or_more_is_stored_exactly(kn, places, fraction_rounding, seconds_rounding) -> None:
    k, n = kn
    exact = Decimal(k) / Decimal(n)
    fraction = printed(exact, places, fraction_rounding)
    seconds = printed(exact * INTERVAL_S, 6, seconds_rounding)  # to the microsecond, down or up
    device_is_gpu = n == 1 and k == 1
    if device_is_gpu:
        return  # a whole GPU is covered by the schema tests (device_uuid == gpu_uuid)
    assert judged(gpu_fraction=fraction, gpu_seconds=seconds) == (None, k / n)


@settings(max_examples=150, deadline=None)
@given(slices, st.floats(min_value=2 * FRACTION_TOLERANCE, max_value=0.008), st.sampled_from([-1, 1]))
def test_a_fraction_that_is_no_k_of_n_is_refused(kn, off, sign) -> None:
    k, n = kn
    fraction = k / n + sign * off
    if not 0 < fraction <= 1:
        return
    # every k/n (n ≤ 8) is over 0.017 from every other one, so this is within 0.008 of k/n alone
    assert all(abs(fraction - j / m) > FRACTION_TOLERANCE for m in range(1, 9) for j in range(1, m + 1))
    assert judged(gpu_fraction=fraction, gpu_seconds=0.0)[0] == "bad_fraction"


@settings(max_examples=100, deadline=None)
@given(slices, st.floats(min_value=2e-6, max_value=1.0))
def test_seconds_past_interval_times_k_of_n_are_refused(kn, over) -> None:
    k, n = kn
    if k == n:
        return
    seconds = INTERVAL_S * k / n + over
    assert judged(gpu_fraction=round(k / n, 6), gpu_seconds=seconds)[0] == "bad_duration"


@pytest.mark.parametrize("fraction", [0.0, -0.5, 1.5, math.inf, 0.3])
def test_no_share_at_all_or_an_impossible_share_is_refused(fraction: float) -> None:
    assert judged(gpu_fraction=fraction, gpu_seconds=0.0)[0] == "bad_fraction"
