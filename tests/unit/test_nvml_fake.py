"""The fake NVML behaves like the driver as seen through the real pynvml wrappers."""

from __future__ import annotations

import pynvml
import pytest

from collectors.fakenvml import installed, library_absent, scenarios

pytestmark = pytest.mark.unit


@pytest.fixture
def node():
    scenario = scenarios.mig_node()
    with installed(scenario) as library:
        pynvml.nvmlInit()
        yield scenario, library
        pynvml.nvmlShutdown()


def test_identity_is_written_into_pynvml_buffers_and_structs(node):
    scenario, _ = node
    handle = pynvml.nvmlDeviceGetHandleByIndex(2)
    gpu = scenario.gpus[2]
    assert pynvml.nvmlDeviceGetUUID(handle) == gpu.uuid
    assert pynvml.nvmlDeviceGetName(handle) == "NVIDIA B200"
    assert pynvml.nvmlDeviceGetSerial(handle) == gpu.serial
    pci = pynvml.nvmlDeviceGetPciInfo(handle)
    assert (pci.busId, pci.bus) == ("00000000:38:00.0", 0x38)
    memory = pynvml.nvmlDeviceGetMemoryInfo(handle, version=pynvml.nvmlMemory_v2)
    assert memory.total == gpu.memory_total_bytes
    assert memory.used + memory.free + memory.reserved == memory.total


def test_process_list_uses_the_two_call_buffer_sizing(node):
    scenario, _ = node
    parent = pynvml.nvmlDeviceGetHandleByIndex(0)
    procs = pynvml.nvmlDeviceGetComputeRunningProcesses(parent)
    assert sorted((p.pid, p.gpuInstanceId) for p in procs) == [(5001, 1), (5002, 5)]
    # first call with an empty buffer -> INSUFFICIENT_SIZE, second call fills it
    assert scenario.calls["nvmlDeviceGetComputeRunningProcesses_v3"] == 2


def test_whole_gpu_processes_carry_no_instance_ids(node):
    (proc,) = pynvml.nvmlDeviceGetComputeRunningProcesses(pynvml.nvmlDeviceGetHandleByIndex(2))
    assert (proc.pid, proc.gpuInstanceId, proc.computeInstanceId) == (5004, 0xFFFFFFFF, 0xFFFFFFFF)


def test_mig_devices_answer_like_the_driver(node):
    parent = pynvml.nvmlDeviceGetHandleByIndex(0)
    assert pynvml.nvmlDeviceGetMigMode(parent) == [1, 1]
    mig = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(parent, 0)
    assert pynvml.nvmlDeviceIsMigDeviceHandle(mig).value == 1  # a ctypes integer, not a bool
    attrs = pynvml.nvmlDeviceGetAttributes(mig)
    assert (attrs.gpuInstanceSliceCount, attrs.memorySizeMB) == (3, 40_192)
    assert pynvml.nvmlDeviceGetName(mig).endswith(" MIG 3g.40gb")
    with pytest.raises(pynvml.NVMLError_NotSupported):
        pynvml.nvmlDeviceGetUtilizationRates(mig)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        pynvml.nvmlDeviceGetTotalEnergyConsumption(mig)
    with pytest.raises(pynvml.NVMLError_NotFound):
        pynvml.nvmlDeviceGetMigDeviceHandleByIndex(parent, 4)
    info = pynvml.nvmlDeviceGetGpuInstanceProfileInfo(parent, pynvml.NVML_GPU_INSTANCE_PROFILE_7_SLICE)
    assert (info.sliceCount, info.name) == (7, "MIG 7g.80gb")
    with pytest.raises(pynvml.NVMLError_NotSupported):
        pynvml.nvmlDeviceGetGpuInstanceProfileInfo(parent, pynvml.NVML_GPU_INSTANCE_PROFILE_8_SLICE)


def test_process_utilisation_with_no_process_is_pynvmls_bare_error_zero(node):
    scenario, _ = node
    scenario.gpus[0].mig_process_utilisation = True
    empty = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(pynvml.nvmlDeviceGetHandleByIndex(0), 2)
    with pytest.raises(pynvml.NVMLError) as caught:
        pynvml.nvmlDeviceGetProcessUtilization(empty, 0)
    assert type(caught.value) is pynvml.NVMLError
    assert caught.value.value == 0


def test_errors_map_to_pynvml_classes_and_strings(node):
    scenario, _ = node
    scenario.gpus[1].lost = True
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        pynvml.nvmlDeviceGetHandleByIndex(1)
    # a code outside pynvml's table is looked up through nvmlErrorString (a char* return)
    assert str(pynvml.NVMLError(pynvml.NVML_ERROR_NO_DATA)) == "Unknown Error"
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        pynvml.nvmlDeviceGetHandleByIndex(7)


def test_wrong_struct_version_is_refused(node):
    handle = pynvml.nvmlDeviceGetHandleByIndex(2)
    with pytest.raises(pynvml.NVMLError_ArgumentVersionMismatch):
        pynvml.nvmlDeviceGetMemoryInfo(handle, version=0x1000028)


def test_missing_symbol_is_function_not_found_and_process_list_mismatch():
    scenario = scenarios.normal_node(count=1)
    scenario.missing = {"nvmlDeviceGetComputeRunningProcesses_v3", "nvmlDeviceGetSerial"}
    with installed(scenario):
        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        with pytest.raises(pynvml.NVMLError_FunctionNotFound):
            pynvml.nvmlDeviceGetSerial(handle)
        with pytest.raises(pynvml.NVMLLibraryMismatchError):
            pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
        assert not isinstance(pynvml.NVMLLibraryMismatchError("x"), pynvml.NVMLError)
        assert [p.pid for p in pynvml.nvmlDeviceGetComputeRunningProcesses_v2(handle)] == [4100]
        pynvml.nvmlShutdown()


def test_calls_before_init_are_uninitialised_and_init_errors_propagate():
    scenario = scenarios.normal_node(count=1)
    with installed(scenario):
        with pytest.raises(pynvml.NVMLError_Uninitialized):
            pynvml.nvmlDeviceGetCount()
        scenario.init_error = pynvml.NVML_ERROR_DRIVER_NOT_LOADED
        with pytest.raises(pynvml.NVMLError_DriverNotLoaded):
            pynvml.nvmlInit()


def test_uninstalling_restores_pynvml_state():
    before = pynvml.nvmlLib
    with installed(scenarios.normal_node(count=1)) as library:
        pynvml.nvmlInit()
        assert pynvml.nvmlLib is library
        assert "nvmlInitWithFlags" in pynvml._nvmlGetFunctionPointer_cache
    assert pynvml.nvmlLib is before
    assert "nvmlInitWithFlags" not in pynvml._nvmlGetFunctionPointer_cache
    with pytest.raises(RuntimeError):
        with installed(scenarios.normal_node(count=1)):
            with installed(scenarios.normal_node(count=1)):
                pass


def test_library_absent_is_library_not_found():
    with library_absent():
        with pytest.raises(pynvml.NVMLError_LibraryNotFound):
            pynvml.nvmlInit()


def test_energy_counter_follows_power_and_resets():
    scenario = scenarios.energy_reset_node()
    with installed(scenario):
        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(1)
        start = pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
        scenario.advance(10.0)
        assert pynvml.nvmlDeviceGetTotalEnergyConsumption(handle) - start == 310_000 * 10
        scenario.reset_energy(1)
        assert pynvml.nvmlDeviceGetTotalEnergyConsumption(handle) == 0
        pynvml.nvmlShutdown()
