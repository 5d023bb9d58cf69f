"""A fake ``libnvidia-ml.so.1``: an object whose attributes are C function pointers.

pynvml resolves every NVML function with ``getattr(pynvml.nvmlLib, name)`` and calls it with
ctypes arguments. :class:`FakeNvmlLibrary` answers those ``getattr`` calls with ``CFUNCTYPE``
callbacks, so a call from pynvml goes through libffi exactly as it would into the driver:
arguments are converted to C, the callback writes into the caller's structs and buffers
through raw addresses, and returns an ``nvmlReturn_t``. pynvml's own code then does what it
does on real hardware: two-call buffer sizing, version fields, mapping return codes to its
``NVMLError_*`` classes, and ``FunctionNotFound`` for a symbol the library lacks.

Handles are opaque non-zero integers (the driver's are pointers); nothing dereferences them.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from ctypes import CFUNCTYPE, c_char_p, c_int, c_uint, c_ulonglong, c_void_p

from collectors.fakenvml import structs
from collectors.fakenvml.model import FakeGpu, FakeMig, FakeProcess, Scenario

SUCCESS = 0
ERROR_UNINITIALIZED = 1
ERROR_INVALID_ARGUMENT = 2
ERROR_NOT_SUPPORTED = 3
ERROR_ALREADY_INITIALIZED = 5
ERROR_NOT_FOUND = 6
ERROR_INSUFFICIENT_SIZE = 7
ERROR_DRIVER_NOT_LOADED = 9
ERROR_GPU_IS_LOST = 15
ERROR_ARGUMENT_VERSION_MISMATCH = 25
ERROR_UNKNOWN = 999

_ERROR_STRINGS = {
    SUCCESS: b"Success",
    ERROR_UNINITIALIZED: b"Uninitialized",
    ERROR_INVALID_ARGUMENT: b"Invalid Argument",
    ERROR_NOT_SUPPORTED: b"Not Supported",
    ERROR_ALREADY_INITIALIZED: b"Already Initialized",
    ERROR_NOT_FOUND: b"Not Found",
    ERROR_INSUFFICIENT_SIZE: b"Insufficient Size",
    ERROR_DRIVER_NOT_LOADED: b"Driver Not Loaded",
    ERROR_GPU_IS_LOST: b"GPU is lost",
    ERROR_ARGUMENT_VERSION_MISMATCH: b"Argument version mismatch",
    ERROR_UNKNOWN: b"Unknown Error",
}
NO_INSTANCE = 0xFFFFFFFF  # gpuInstanceId / computeInstanceId of a process outside MIG

_GPU_HANDLE_BASE = 0x7E5A_0000


def _write_string(address: int, length: int, text: str) -> int:
    data = text.encode()
    if length < len(data) + 1:
        return ERROR_INSUFFICIENT_SIZE
    ctypes.memmove(address, data + b"\0", len(data) + 1)
    return SUCCESS


def _put(ctype: type, address: int | None, value: int) -> int:
    if not address:
        return ERROR_INVALID_ARGUMENT
    ctype.from_address(address).value = value
    return SUCCESS


class FakeNvmlLibrary:
    """The fake shared library over one :class:`Scenario`.

    Every function checks, in this order, what the driver checks: initialised, the handle
    is valid, the GPU is not lost, a hang or NotSupported fault; then it answers.
    """

    def __init__(self, scenario: Scenario):
        self.scenario = scenario
        self._initialised = 0
        self._keep: list[object] = []  # callbacks and strings must outlive every call
        self._error_strings = {
            code: ctypes.create_string_buffer(text) for code, text in _ERROR_STRINGS.items()
        }
        self._define_all()

    # -- plumbing -----------------------------------------------------------------------

    def _export(self, name: str, restype: type, argtypes: list[type], body: Callable[..., int]) -> None:
        if name in self.scenario.missing:
            return  # getattr raises AttributeError: pynvml maps it to FunctionNotFound
        scenario = self.scenario

        def counted(*args: object) -> object:
            scenario.calls[name] += 1
            return body(*args)

        pointer = CFUNCTYPE(restype, *argtypes)(counted)
        self._keep.append(pointer)
        setattr(self, name, pointer)

    def _device(self, handle: int | None) -> tuple[FakeGpu, FakeMig | None] | None:
        if not handle or handle < _GPU_HANDLE_BASE:
            return None
        offset = handle - _GPU_HANDLE_BASE
        gpu_index, mig_slot = divmod(offset, 0x1000)
        gpus = self.scenario.gpus
        if gpu_index >= len(gpus):
            return None
        gpu = gpus[gpu_index]
        if mig_slot == 0:
            return gpu, None
        if not gpu.mig_enabled or mig_slot - 1 >= len(gpu.migs):
            return None  # stale MIG handle after reconfiguration
        return gpu, gpu.migs[mig_slot - 1]

    def _device_call(self, name: str, body: Callable[..., int]) -> Callable[..., int]:
        """Wrap a per-device function with the driver's common checks."""

        def call(handle: int | None, *args: object) -> int:
            if not self._initialised:
                return ERROR_UNINITIALIZED
            found = self._device(handle)
            if found is None:
                return ERROR_INVALID_ARGUMENT
            gpu, mig = found
            if gpu.lost:
                return ERROR_GPU_IS_LOST
            if name in gpu.hang:
                self.scenario.wait_while_hung()
            if name in gpu.unsupported:
                return ERROR_NOT_SUPPORTED
            return body(gpu, mig, *args)

        return call

    def _device_fn(self, name: str, argtypes: list[type], body: Callable[..., int]) -> None:
        self._export(name, c_int, [c_void_p, *argtypes], self._device_call(name, body))

    @staticmethod
    def _handle(gpu_index: int, mig_index: int | None = None) -> int:
        return _GPU_HANDLE_BASE + gpu_index * 0x1000 + (0 if mig_index is None else mig_index + 1)

    # -- the functions ------------------------------------------------------------------

    def _define_all(self) -> None:
        self._define_system()
        self._define_identity()
        self._define_mig()
        self._define_readings()
        self._define_processes()

    def _define_system(self) -> None:
        scenario = self.scenario

        def init(_flags: int) -> int:
            if scenario.init_error:
                return scenario.init_error
            self._initialised += 1
            return SUCCESS

        def shutdown() -> int:
            if not self._initialised:
                return ERROR_UNINITIALIZED
            self._initialised -= 1
            return SUCCESS

        def error_string(code: int) -> int | None:
            buffer = self._error_strings.get(code, self._error_strings[ERROR_UNKNOWN])
            return ctypes.addressof(buffer)

        def version_fn(text_of: Callable[[], str]) -> Callable[[int, int], int]:
            def fn(address: int, length: int) -> int:
                if not self._initialised:
                    return ERROR_UNINITIALIZED
                return _write_string(address, length, text_of())

            return fn

        def count(address: int) -> int:
            if not self._initialised:
                return ERROR_UNINITIALIZED
            return _put(c_uint, address, len(scenario.gpus))

        def by_index(index: int, address: int) -> int:
            if not self._initialised:
                return ERROR_UNINITIALIZED
            if index >= len(scenario.gpus):
                return ERROR_INVALID_ARGUMENT
            if scenario.gpus[index].lost:
                return ERROR_GPU_IS_LOST
            return _put(c_void_p, address, self._handle(index))

        def by_uuid(uuid: bytes, address: int) -> int:
            if not self._initialised:
                return ERROR_UNINITIALIZED
            for index, gpu in enumerate(scenario.gpus):
                if gpu.uuid.encode() == uuid:
                    return ERROR_GPU_IS_LOST if gpu.lost else _put(c_void_p, address, self._handle(index))
            return ERROR_NOT_FOUND

        self._export("nvmlInitWithFlags", c_int, [c_uint], init)
        self._export("nvmlInit_v2", c_int, [], lambda: init(0))
        self._export("nvmlShutdown", c_int, [], shutdown)
        # pynvml sets restype=c_char_p on this pointer; the callback hands back the address
        # of a buffer that lives as long as the library.
        self._export("nvmlErrorString", c_void_p, [c_int], error_string)
        self._export("nvmlSystemGetDriverVersion", c_int, [c_void_p, c_uint],
                     version_fn(lambda: scenario.driver_version))
        self._export("nvmlSystemGetNVMLVersion", c_int, [c_void_p, c_uint],
                     version_fn(lambda: scenario.nvml_version))
        self._export("nvmlDeviceGetCount_v2", c_int, [c_void_p], count)
        self._export("nvmlDeviceGetHandleByIndex_v2", c_int, [c_uint, c_void_p], by_index)
        self._export("nvmlDeviceGetHandleByUUID", c_int, [c_char_p, c_void_p], by_uuid)

    def _define_identity(self) -> None:
        def uuid(gpu: FakeGpu, mig: FakeMig | None, address: int, length: int) -> int:
            return _write_string(address, length, mig.uuid if mig else gpu.uuid)

        def name(gpu: FakeGpu, mig: FakeMig | None, address: int, length: int) -> int:
            text = f"{gpu.name} MIG {mig.profile}" if mig else gpu.name
            return _write_string(address, length, text)

        def serial(gpu: FakeGpu, mig: FakeMig | None, address: int, length: int) -> int:
            return _write_string(address, length, gpu.serial)

        def pci(gpu: FakeGpu, mig: FakeMig | None, address: int) -> int:
            if not address:
                return ERROR_INVALID_ARGUMENT
            info = structs.PciInfo.from_address(address)
            domain, bus, rest = gpu.pci_bus_id.split(":")
            device = rest.split(".")[0]
            info.busId = gpu.pci_bus_id.encode()
            info.busIdLegacy = f"{int(domain, 16) & 0xFFFF:04x}:{bus}:{rest}".encode()
            info.domain, info.bus, info.device = int(domain, 16), int(bus, 16), int(device, 16)
            info.pciDeviceId, info.pciSubSystemId = 0x233010DE, 0x16C110DE
            return SUCCESS

        self._device_fn("nvmlDeviceGetUUID", [c_void_p, c_uint], uuid)
        self._device_fn("nvmlDeviceGetName", [c_void_p, c_uint], name)
        self._device_fn("nvmlDeviceGetSerial", [c_void_p, c_uint], serial)
        self._device_fn("nvmlDeviceGetPciInfo_v3", [c_void_p], pci)

    def _define_mig(self) -> None:
        def mig_mode(gpu: FakeGpu, mig: FakeMig | None, current: int, pending: int) -> int:
            if mig is not None or not gpu.profiles:
                return ERROR_NOT_SUPPORTED
            mode = int(gpu.mig_enabled)
            return _put(c_uint, current, mode) or _put(c_uint, pending, mode)

        def max_count(gpu: FakeGpu, mig: FakeMig | None, address: int) -> int:
            if mig is not None or not gpu.profiles:
                return ERROR_NOT_SUPPORTED
            return _put(c_uint, address, gpu.max_slices)

        def mig_by_index(gpu: FakeGpu, mig: FakeMig | None, index: int, address: int) -> int:
            if mig is not None or not gpu.mig_enabled:
                return ERROR_INVALID_ARGUMENT
            if index >= len(gpu.migs):
                return ERROR_NOT_FOUND
            gpu_index = self.scenario.gpus.index(gpu)
            return _put(c_void_p, address, self._handle(gpu_index, index))

        def is_mig(gpu: FakeGpu, mig: FakeMig | None, address: int) -> int:
            return _put(c_uint, address, int(mig is not None))

        def parent(gpu: FakeGpu, mig: FakeMig | None, address: int) -> int:
            if mig is None:
                return ERROR_INVALID_ARGUMENT
            return _put(c_void_p, address, self._handle(self.scenario.gpus.index(gpu)))

        def gi_id(gpu: FakeGpu, mig: FakeMig | None, address: int) -> int:
            return ERROR_INVALID_ARGUMENT if mig is None else _put(c_uint, address, mig.gpu_instance_id)

        def ci_id(gpu: FakeGpu, mig: FakeMig | None, address: int) -> int:
            return ERROR_INVALID_ARGUMENT if mig is None else _put(c_uint, address, mig.compute_instance_id)

        def attributes(gpu: FakeGpu, mig: FakeMig | None, address: int) -> int:
            if not address:
                return ERROR_INVALID_ARGUMENT
            attrs = structs.DeviceAttributes.from_address(address)
            if mig is None:
                slices, compute, memory_mb = gpu.max_slices or 1, gpu.max_slices or 1, gpu.memory_total_bytes >> 20
            else:
                profile = gpu.profile(mig.profile)
                slices, memory_mb = profile.slices, profile.memory_mb
                compute = mig.compute_slices or profile.slices
            attrs.multiprocessorCount = 16 * compute
            attrs.sharedCopyEngineCount = attrs.sharedDecoderCount = slices
            attrs.sharedEncoderCount = attrs.sharedJpegCount = attrs.sharedOfaCount = 0
            attrs.gpuInstanceSliceCount = slices
            attrs.computeInstanceSliceCount = compute
            attrs.memorySizeMB = memory_mb
            return SUCCESS

        def profile_info(gpu: FakeGpu, mig: FakeMig | None, profile_id: int, address: int) -> int:
            if mig is not None:
                return ERROR_INVALID_ARGUMENT
            if not address:
                return ERROR_INVALID_ARGUMENT
            info = structs.GpuInstanceProfileInfoV2.from_address(address)
            if info.version != structs.GPU_INSTANCE_PROFILE_INFO_V2_VERSION:
                return ERROR_ARGUMENT_VERSION_MISMATCH
            if not gpu.profiles:
                return ERROR_NOT_SUPPORTED
            for profile in gpu.profiles:
                if profile.profile_id == profile_id:
                    info.id = profile.profile_id
                    info.isP2pSupported = 0
                    info.sliceCount = profile.slices
                    info.instanceCount = gpu.max_slices // profile.slices
                    info.multiprocessorCount = 16 * profile.slices
                    info.copyEngineCount = info.decoderCount = profile.slices
                    info.encoderCount = info.jpegCount = info.ofaCount = 0
                    info.memorySizeMB = profile.memory_mb
                    info.name = f"MIG {profile.name}".encode()
                    return SUCCESS
            return ERROR_NOT_SUPPORTED  # this GPU lacks the profile (driver's answer)

        self._device_fn("nvmlDeviceGetMigMode", [c_void_p, c_void_p], mig_mode)
        self._device_fn("nvmlDeviceGetMaxMigDeviceCount", [c_void_p], max_count)
        self._device_fn("nvmlDeviceGetMigDeviceHandleByIndex", [c_uint, c_void_p], mig_by_index)
        self._device_fn("nvmlDeviceIsMigDeviceHandle", [c_void_p], is_mig)
        self._device_fn("nvmlDeviceGetDeviceHandleFromMigDeviceHandle", [c_void_p], parent)
        self._device_fn("nvmlDeviceGetGpuInstanceId", [c_void_p], gi_id)
        self._device_fn("nvmlDeviceGetComputeInstanceId", [c_void_p], ci_id)
        self._device_fn("nvmlDeviceGetAttributes_v2", [c_void_p], attributes)
        self._device_fn("nvmlDeviceGetGpuInstanceProfileInfoV", [c_uint, c_void_p], profile_info)

    def _define_readings(self) -> None:
        scenario = self.scenario

        def memory(gpu: FakeGpu, mig: FakeMig | None) -> tuple[int, int]:
            if mig is None:
                return gpu.memory_total_bytes, gpu.memory_used_bytes
            return gpu.profile(mig.profile).memory_mb << 20, mig.memory_used_bytes

        def memory_v1(gpu: FakeGpu, mig: FakeMig | None, address: int) -> int:
            if not address:
                return ERROR_INVALID_ARGUMENT
            total, used = memory(gpu, mig)
            out = structs.Memory.from_address(address)
            out.total, out.used, out.free = total, used, total - used
            return SUCCESS

        def memory_v2(gpu: FakeGpu, mig: FakeMig | None, address: int) -> int:
            if not address:
                return ERROR_INVALID_ARGUMENT
            out = structs.MemoryV2.from_address(address)
            if out.version != structs.MEMORY_V2_VERSION:
                return ERROR_ARGUMENT_VERSION_MISMATCH
            total, used = memory(gpu, mig)
            reserved = min(total - used, 512 << 20)
            out.total, out.used, out.reserved = total, used, reserved
            out.free = total - used - reserved
            return SUCCESS

        def utilisation(gpu: FakeGpu, mig: FakeMig | None, address: int) -> int:
            if mig is not None or gpu.mig_enabled:
                return ERROR_NOT_SUPPORTED  # no plain utilisation in MIG mode
            if not address:
                return ERROR_INVALID_ARGUMENT
            out = structs.Utilization.from_address(address)
            out.gpu, out.memory = gpu.utilisation_percent, gpu.memory_utilisation_percent
            return SUCCESS

        def power(gpu: FakeGpu, mig: FakeMig | None, address: int) -> int:
            if mig is not None:
                return ERROR_NOT_SUPPORTED  # power is per physical GPU
            return _put(c_uint, address, gpu.power_milliwatts)

        def energy(gpu: FakeGpu, mig: FakeMig | None, address: int) -> int:
            if mig is not None:
                return ERROR_NOT_SUPPORTED  # energy is per physical GPU
            scenario.sync_clock()
            return _put(c_ulonglong, address, gpu.energy_millijoules)

        self._device_fn("nvmlDeviceGetMemoryInfo", [c_void_p], memory_v1)
        self._device_fn("nvmlDeviceGetMemoryInfo_v2", [c_void_p], memory_v2)
        self._device_fn("nvmlDeviceGetUtilizationRates", [c_void_p], utilisation)
        self._device_fn("nvmlDeviceGetPowerUsage", [c_void_p], power)
        self._device_fn("nvmlDeviceGetTotalEnergyConsumption", [c_void_p], energy)

    def _define_processes(self) -> None:
        def running(gpu: FakeGpu, mig: FakeMig | None) -> list[tuple[FakeProcess, int, int]]:
            if mig is not None:
                return [(p, mig.gpu_instance_id, mig.compute_instance_id) for p in mig.processes]
            if gpu.mig_enabled:  # the parent lists every instance's processes
                return [
                    (p, m.gpu_instance_id, m.compute_instance_id) for m in gpu.migs for p in m.processes
                ]
            return [(p, NO_INSTANCE, NO_INSTANCE) for p in gpu.processes]

        def compute_processes(gpu: FakeGpu, mig: FakeMig | None, count_address: int, infos: int | None) -> int:
            if not count_address:
                return ERROR_INVALID_ARGUMENT
            procs = running(gpu, mig)
            count = c_uint.from_address(count_address)
            capacity = count.value
            count.value = len(procs)
            if not procs:
                return SUCCESS
            if capacity < len(procs) or not infos:
                return ERROR_INSUFFICIENT_SIZE
            size = ctypes.sizeof(structs.ProcessInfo)
            for i, (proc, gi, ci) in enumerate(procs):
                out = structs.ProcessInfo.from_address(infos + i * size)
                out.pid, out.usedGpuMemory = proc.pid, proc.used_memory_bytes
                out.gpuInstanceId, out.computeInstanceId = gi, ci
            return SUCCESS

        def process_utilisation(gpu: FakeGpu, mig: FakeMig | None, samples: int | None,
                                count_address: int, since: int) -> int:
            if mig is not None and not gpu.mig_process_utilisation:
                return ERROR_NOT_SUPPORTED
            if not count_address:
                return ERROR_INVALID_ARGUMENT
            procs = running(gpu, mig)
            count = c_uint.from_address(count_address)
            capacity = count.value
            count.value = len(procs)
            if not procs:
                return SUCCESS  # pynvml turns this into a bare NVMLError(0): a known trap
            if capacity < len(procs) or not samples:
                return ERROR_INSUFFICIENT_SIZE
            size = ctypes.sizeof(structs.ProcessUtilizationSample)
            for i, (proc, _gi, _ci) in enumerate(procs):
                out = structs.ProcessUtilizationSample.from_address(samples + i * size)
                out.pid, out.timeStamp = proc.pid, since + 1
                out.smUtil, out.memUtil, out.encUtil, out.decUtil = proc.sm_util_percent, 0, 0, 0
            return SUCCESS

        for name in ("nvmlDeviceGetComputeRunningProcesses_v3", "nvmlDeviceGetComputeRunningProcesses_v2"):
            self._device_fn(name, [c_void_p, c_void_p], compute_processes)
        self._device_fn("nvmlDeviceGetProcessUtilization", [c_void_p, c_void_p, c_ulonglong],
                        process_utilisation)
