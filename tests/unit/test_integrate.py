"""Interval integration: samples of a node into schema-v1 events."""

from __future__ import annotations

import pytest

from collectors.device import DeviceInfo, DeviceSample, Owner
from collectors.integrate import IntervalIntegrator
from streams.schema import make_event_id

pytestmark = pytest.mark.unit

T0 = 1_793_458_800  # 2026-10-31T15:00:00Z = 2026-11-01 00:00 KST, aligned to the minute
WHOLE = DeviceInfo("GPU-A", "GPU-A", "NVIDIA B200")
MIG3 = DeviceInfo("GPU-B", "MIG-B3", "NVIDIA B200", "3g.90gb", 3 / 7)
MIG1 = DeviceInfo("GPU-B", "MIG-B1", "NVIDIA B200", "1g.23gb", 1 / 7)


class JobOwner:
    """Attributor twin: one job on every device."""

    def owner(self, sample: DeviceSample) -> Owner:
        return Owner("gov", "snu-llm", "slurm:42")


def integrator(interval_s: int = 60, period_s: float = 10) -> IntervalIntegrator:
    return IntervalIntegrator("dc1", "n1", interval_s, period_s, JobOwner())


def s(device: DeviceInfo, t: float, util: float = 50.0, energy_mj: int | None = None, flags=()) -> DeviceSample:
    return DeviceSample(device, t, utilisation_percent=util, energy_millijoules=energy_mj, flags=frozenset(flags))


def test_a_full_interval_of_a_whole_gpu() -> None:
    it = integrator()
    events = []
    for k in range(6):
        events += it.add([s(WHOLE, T0 + 10 * k, util=50.0, energy_mj=1_000_000 + 10_000 * k)])
    assert events == []  # the interval is still open
    [event] = it.add([s(WHOLE, T0 + 60, energy_mj=1_060_000)])
    assert event.interval_start == "2026-10-31T15:00:00Z"
    assert event.interval_end == "2026-10-31T15:01:00Z"
    assert event.event_id == make_event_id("n1", "GPU-A", "2026-10-31T15:00:00Z")
    assert event.gpu_seconds == 60.0
    assert event.busy_gpu_seconds == 30.0
    assert event.samples == event.expected_samples == 6
    assert event.energy_joules == 50.0  # 5 deltas of 10 J inside the interval
    assert event.flags == ()
    assert (event.entity, event.project, event.job_id) == ("gov", "snu-llm", "slurm:42")


def test_missing_samples_make_a_partial_interval_not_zero_filled() -> None:
    it = integrator()
    it.add([s(WHOLE, T0), s(WHOLE, T0 + 10)][:1])
    it.add([s(WHOLE, T0 + 10)])
    [event] = it.flush()
    assert event.samples == 2
    assert event.gpu_seconds == 20.0
    assert "partial_interval" in event.flags


def test_mig_instances_count_their_fraction_and_share_the_gpu_energy() -> None:
    it = integrator()
    for k in range(6):
        counter = 2_000_000 + 70_000 * k
        it.add([s(MIG3, T0 + 10 * k, 100.0, counter), s(MIG1, T0 + 10 * k, 100.0, counter)])
    events = {e.device_uuid: e for e in it.flush()}
    assert events["MIG-B3"].gpu_seconds == pytest.approx(60 * 3 / 7, abs=1e-6)
    assert events["MIG-B1"].gpu_seconds == pytest.approx(60 * 1 / 7, abs=1e-6)
    # energy is per physical GPU (350 J over the interval), apportioned, never summed twice
    assert events["MIG-B3"].energy_joules == pytest.approx(350 * 3 / 7, abs=1e-3)
    assert events["MIG-B1"].energy_joules == pytest.approx(350 * 1 / 7, abs=1e-3)
    assert sum(e.gpu_seconds for e in events.values()) <= 60.0  # invariant 2


def test_an_energy_counter_that_goes_down_is_a_reset_never_a_negative_delta() -> None:
    it = integrator()
    it.add([s(WHOLE, T0, energy_mj=9_000_000)])
    it.add([s(WHOLE, T0 + 10, energy_mj=9_010_000)])
    it.add([s(WHOLE, T0 + 20, energy_mj=5_000)])  # driver reloaded
    it.add([s(WHOLE, T0 + 30, energy_mj=15_000)])
    [event] = it.flush()
    assert event.energy_joules == 20.0  # 10 J before the reset + 10 J after, the drop ignored
    assert "counter_reset" in event.flags


def test_a_lost_gpu_is_flagged_and_not_counted_present() -> None:
    it = integrator()
    it.add([s(WHOLE, T0)])
    it.add([DeviceSample(WHOLE, T0 + 10, flags=frozenset({"gpu_lost"}))])
    [event] = it.flush()
    assert event.samples == 1
    assert event.gpu_seconds == 10.0
    assert {"gpu_lost", "partial_interval"} <= set(event.flags)


def test_a_silent_device_yields_no_event_for_the_silent_intervals() -> None:
    it = integrator()
    it.add([s(WHOLE, T0)])
    events = it.add([s(WHOLE, T0 + 600)])  # ten minutes of silence
    assert [e.interval_start for e in events] == ["2026-10-31T15:00:00Z"]


def test_utilisation_above_100_or_below_0_is_clamped() -> None:
    it = integrator(interval_s=60, period_s=60)
    it.add([s(WHOLE, T0, util=250.0)])
    [event] = it.flush()
    assert event.busy_gpu_seconds == event.gpu_seconds == 60.0


def test_the_interval_must_divide_the_hour() -> None:
    with pytest.raises(ValueError, match="divide 3600"):
        integrator(interval_s=7 * 60)
