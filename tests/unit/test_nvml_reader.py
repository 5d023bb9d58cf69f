"""NvmlReader over the fake NVML: the real pynvml wrappers run, the driver is the fake."""

from __future__ import annotations

import threading

import pytest

from collectors.errors import NvmlUnavailable
from collectors.fakenvml import FakeMig, FakeProcess, installed, library_absent, scenarios
from collectors.nvml import NvmlReader

pytestmark = pytest.mark.unit


class ManualClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def read(scenario, **kwargs):
    with installed(scenario), NvmlReader(**kwargs) as reader:
        return reader.sample(1_700_000_000.0)


def test_normal_node_reads_every_gpu_by_uuid():
    scenario = scenarios.normal_node()
    samples = read(scenario)
    assert [s.device.device_uuid for s in samples] == [g.uuid for g in scenario.gpus]
    for sample, gpu in zip(samples, scenario.gpus, strict=True):
        assert sample.device.gpu_uuid == gpu.uuid
        assert sample.device.gpu_model == "NVIDIA B200"
        assert (sample.device.serial, sample.device.pci_bus_id) == (gpu.serial, gpu.pci_bus_id)
        assert sample.device.gpu_fraction == 1.0 and sample.device.mig_profile is None
        assert sample.utilisation_percent == gpu.utilisation_percent
        assert sample.memory_used_bytes == gpu.memory_used_bytes
        assert sample.power_watts == gpu.power_milliwatts / 1000
        assert sample.energy_millijoules == gpu.energy_millijoules
        assert sample.pids == tuple(p.pid for p in gpu.processes)
        assert sample.flags == frozenset()


def test_mig_fractions_come_from_the_driver_not_from_seven():
    samples = read(scenarios.mig_node())
    by_profile = [(s.device.gpu_model, s.device.mig_profile, s.device.gpu_fraction) for s in samples]
    assert by_profile == [
        ("NVIDIA H100 80GB HBM3", "3g.40gb", 3 / 7),
        ("NVIDIA H100 80GB HBM3", "2g.20gb", 2 / 7),
        ("NVIDIA H100 80GB HBM3", "1g.10gb", 1 / 7),
        ("NVIDIA H100 80GB HBM3", "1g.10gb", 1 / 7),
        ("NVIDIA A30", "2g.12gb", 2 / 4),
        ("NVIDIA A30", "1g.6gb", 1 / 4),
        ("NVIDIA A30", "1g.6gb", 1 / 4),
        ("NVIDIA B200", None, 1.0),
    ]
    h100 = samples[:4]
    assert len({s.device.device_uuid for s in h100}) == 4
    assert all(s.device.device_uuid.startswith("MIG-") for s in h100)
    assert {s.device.gpu_uuid for s in h100} == {samples[0].device.gpu_uuid}
    # energy is the physical GPU's counter, the same on every instance (never summed)
    assert {s.energy_millijoules for s in h100} == {samples[0].energy_millijoules}
    assert h100[0].memory_used_bytes == 30 << 30 and h100[0].device.memory_total_bytes == 40_192 << 20


def test_mig_utilisation_falls_back_to_occupancy_and_says_so():
    samples = read(scenarios.mig_node())
    migs = [s for s in samples if s.device.mig_profile]
    assert [(s.pids, s.utilisation_percent) for s in migs[:3]] == [((5001,), 100.0), ((5002,), 100.0), ((), 0.0)]
    assert all("utilisation_fallback" in s.flags for s in migs)
    assert "utilisation_fallback" not in samples[-1].flags


def test_mig_utilisation_uses_process_samples_where_the_driver_has_them():
    scenario = scenarios.mig_node()
    scenario.gpus[0].mig_process_utilisation = True
    scenario.gpus[0].migs[0].processes = [FakeProcess(5001, sm_util_percent=30), FakeProcess(5005, sm_util_percent=25)]
    samples = read(scenario)
    assert samples[0].utilisation_percent == 55.0
    # an instance with no process: pynvml raises a bare NVMLError(0); it means 0 %
    assert (samples[2].utilisation_percent, samples[2].flags) == (0.0, frozenset({"utilisation_fallback"}))


def test_slices_of_a_compute_instance_inside_a_larger_gpu_instance():
    scenario = scenarios.mig_node()
    scenario.gpus[0].migs[0] = FakeMig("MIG-ci", "3g.40gb", gpu_instance_id=1, compute_slices=1)
    samples = read(scenario)
    assert samples[0].device.gpu_fraction == 1 / 7


def test_lost_gpu_is_flagged_and_the_others_are_read():
    scenario = scenarios.lost_gpu_node()
    with installed(scenario), NvmlReader() as reader:
        reader.sample(0.0)
        scenario.gpus[2].lost = True
        samples = reader.sample(10.0)
    assert len(samples) == 4
    lost = samples[2]
    assert lost.device.gpu_uuid == scenario.gpus[2].uuid
    assert lost.flags == frozenset({"gpu_lost"})
    assert (lost.utilisation_percent, lost.energy_millijoules, lost.pids) == (None, None, ())
    assert all(s.flags == frozenset() and s.energy_millijoules for i, s in enumerate(samples) if i != 2)


def test_hung_call_flags_that_gpu_and_does_not_park_a_thread_per_sample():
    scenario = scenarios.hung_call_node(function="nvmlDeviceGetPowerUsage")
    with installed(scenario), NvmlReader(timeout_s=0.05) as reader:
        first = reader.sample(0.0)
        assert [s.flags for s in first] == [frozenset(), frozenset({"nvml_error"}), frozenset(), frozenset()]
        assert first[3].energy_millijoules == scenario.gpus[3].energy_millijoules
        threads = threading.active_count()
        second = reader.sample(10.0)
        assert second[1].flags == frozenset({"nvml_error"})
        assert scenario.calls["nvmlDeviceGetPowerUsage"] == 4 + 3  # GPU 1 not asked again
        assert threading.active_count() <= threads  # no new parked thread
        scenario.release_hangs()
        for _ in range(200):  # wait for the parked call to return (bounded, not timed)
            if threading.active_count() < threads:
                break
            threading.Event().wait(0.01)
        third = reader.sample(20.0)
    assert third[1].flags == frozenset() and third[1].power_watts == 310.0


def test_not_supported_reading_is_absent_not_an_error():
    scenario = scenarios.normal_node(count=2)
    scenario.gpus[0].unsupported.add("nvmlDeviceGetTotalEnergyConsumption")
    samples = read(scenario)
    assert samples[0].energy_millijoules is None and samples[0].flags == frozenset()
    assert samples[1].energy_millijoules == scenario.gpus[1].energy_millijoules


def test_energy_counter_reset_is_reported_as_read():
    scenario = scenarios.energy_reset_node()
    with installed(scenario), NvmlReader() as reader:
        before = reader.sample(0.0)[1].energy_millijoules
        scenario.reset_energy(1, to_millijoules=500)
        after = reader.sample(10.0)[1].energy_millijoules
    assert before > after == 500  # the integrator turns the decrease into counter_reset


def test_old_driver_without_v3_process_list_still_gives_pids():
    scenario = scenarios.normal_node(count=2)
    scenario.missing.add("nvmlDeviceGetComputeRunningProcesses_v3")
    samples = read(scenario)
    assert [s.pids for s in samples] == [(4100,), (4101,)]
    assert all(s.flags == frozenset() for s in samples)


def test_mig_reconfiguration_is_picked_up():
    scenario = scenarios.mig_node()
    with installed(scenario), NvmlReader() as reader:
        assert len(reader.sample(0.0)) == 8
        del scenario.gpus[0].migs[3]  # an operator destroyed one instance: its handle is stale
        stale = reader.sample(10.0)
        assert "nvml_error" in stale[3].flags
        fresh = reader.sample(20.0)
    assert [s.device.mig_profile for s in fresh[:3]] == ["3g.40gb", "2g.20gb", "1g.10gb"]
    assert len(fresh) == 7 and all("nvml_error" not in s.flags for s in fresh)


def test_periodic_rediscovery_follows_the_clock():
    scenario = scenarios.normal_node(count=2)
    clock = ManualClock()
    with installed(scenario), NvmlReader(rediscover_s=300, clock=clock) as reader:
        reader.sample(0.0)
        scenario.gpus[1].mig_enabled = True
        scenario.gpus[1].migs = [FakeMig("MIG-new", "4g.90gb", gpu_instance_id=1)]
        assert reader.sample(1.0)[1].device.mig_profile is None
        clock.now = 300.0
        assert reader.sample(2.0)[1].device.mig_profile == "4g.90gb"


def test_missing_library_says_what_to_do():
    with library_absent(), pytest.raises(NvmlUnavailable) as caught:
        NvmlReader().open()
    message = str(caught.value)
    assert "libnvidia-ml.so.1" in message and "--simulate" in message and "nvidia-smi" in message


def test_driver_not_loaded_says_so():
    scenario = scenarios.normal_node(count=1)
    scenario.init_error = 9  # NVML_ERROR_DRIVER_NOT_LOADED
    with installed(scenario), pytest.raises(NvmlUnavailable, match="driver is not loaded"):
        NvmlReader().open()


def test_gpu_hung_at_discovery_is_skipped_then_found_later():
    scenario = scenarios.normal_node(count=2)
    scenario.gpus[0].hang.add("nvmlDeviceGetUUID")
    clock = ManualClock()
    with installed(scenario), NvmlReader(timeout_s=0.05, clock=clock) as reader:
        assert [d.gpu_uuid for d in reader.devices] == [scenario.gpus[1].uuid]
        assert len(reader.sample(0.0)) == 1
        scenario.gpus[0].hang.clear()
        scenario.release_hangs()
        clock.now = 29.0
        assert len(reader.sample(1.0)) == 1  # an incomplete discovery is retried after 30 s
        for _ in range(200):  # the parked discovery call must come back before a retry
            clock.now += 30.0
            if len(reader.sample(1.0)) == 2:
                break
            threading.Event().wait(0.01)
        assert [d.gpu_uuid for d in reader.devices] == [g.uuid for g in scenario.gpus]


def test_every_gpu_hung_at_discovery_is_unavailable():
    scenario = scenarios.normal_node(count=1)
    scenario.gpus[0].hang.add("nvmlDeviceGetUUID")
    with installed(scenario), pytest.raises(NvmlUnavailable, match="could be read"):
        NvmlReader(timeout_s=0.05).open()


def test_node_without_gpus_is_unavailable():
    with installed(scenarios.normal_node(count=0)), pytest.raises(NvmlUnavailable, match="no GPU"):
        NvmlReader().open()
