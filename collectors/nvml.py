"""The real device reader: NVML through pynvml (``nvidia-ml-py``).

This module and :mod:`collectors.nvml_calls` are the only places that import pynvml.

What it guarantees (and what breaks if it did not):

* Devices are identified by UUID, never by index: an index changes when a GPU disappears,
  and usage would silently move to the wrong GPU.
* A MIG instance's ``gpu_fraction`` is its slice count over the GPU's maximum slice count,
  read from the driver (the largest GPU-instance profile), never assumed to be 7.
* One GPU's trouble stays on that GPU: ``GpuIsLost`` flags that GPU's devices ``gpu_lost``; a
  call that errors flags ``nvml_error``; the other GPUs are read as usual.
* No NVML call can freeze the agent: every call runs on a worker thread and the sampling
  thread waits at most ``timeout_s`` for one GPU's reads. A GPU whose call did not return is
  flagged ``nvml_error`` and skipped (not re-queued) until the stuck call comes back, so a
  hung driver costs one parked thread per GPU, not one per sample.
* A missing library, driver or permission stops :meth:`NvmlReader.open` with
  :class:`~collectors.errors.NvmlUnavailable` and a message that says what to do.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

from collectors.device import DeviceInfo, DeviceSample
from collectors.errors import NvmlUnavailable
from collectors.nvml_calls import NvmlCallTimeout, NvmlWorker
from streams.schema import Flag

log = logging.getLogger("gpuledger.collector.nvml")

_HELP = (
    "install the NVIDIA driver on this node (check with `nvidia-smi`); in a container, run it "
    "with the NVIDIA container toolkit (`--gpus all` or `runtime: nvidia`) and the host PID "
    "namespace; to try the collector without a GPU, use `gpuledger collect --simulate`"
)


@dataclasses.dataclass(slots=True)
class _Mig:
    handle: Any
    info: DeviceInfo
    last_process_sample_us: int = 0


@dataclasses.dataclass(slots=True)
class _Gpu:
    index: int
    handle: Any
    info: DeviceInfo
    migs: list[_Mig]
    mig_mode: bool

    @property
    def devices(self) -> list[DeviceInfo]:
        return [m.info for m in self.migs] if self.mig_mode else [self.info]


def _text(value: str | bytes) -> str:
    """pynvml's printable structs hand char arrays back as ``str``, plain ones as ``bytes``."""
    return value.decode() if isinstance(value, bytes) else value


def _unavailable(pynvml: Any, exc: BaseException) -> NvmlUnavailable:
    """Turn an initialisation failure into a message an operator can act on."""
    if isinstance(exc, NvmlCallTimeout):
        return NvmlUnavailable(f"NVML did not answer within {exc.timeout_s:g} s (hung driver?): {_HELP}")
    if isinstance(exc, pynvml.NVMLError_LibraryNotFound):
        return NvmlUnavailable(f"the NVML library (libnvidia-ml.so.1) was not found: {_HELP}")
    if isinstance(exc, pynvml.NVMLError_DriverNotLoaded):
        return NvmlUnavailable(f"the NVIDIA kernel driver is not loaded: {_HELP}")
    if isinstance(exc, pynvml.NVMLError_NoPermission):
        return NvmlUnavailable(
            "no permission to use NVML: the collector's user needs read/write on /dev/nvidia*"
        )
    if isinstance(exc, pynvml.NVMLError_LibRmVersionMismatch):
        return NvmlUnavailable(
            "the NVML library and the loaded kernel driver differ in version (driver upgraded "
            "without reboot?): reload the nvidia kernel module or reboot the node"
        )
    return NvmlUnavailable(f"NVML failed to start: {exc!s}: {_HELP}")


class NvmlReader:
    """Samples every GPU and MIG instance of the node (a :class:`~collectors.device.DeviceReader`).

    ``timeout_s`` bounds the wait for one GPU's reads; ``rediscover_s`` is how often the
    device layout (MIG reconfiguration, a GPU back after a reset) is read again.
    ``clock`` (monotonic seconds) only schedules rediscovery. Use as a context manager, or
    call :meth:`open` / :meth:`close`.
    """

    def __init__(
        self,
        *,
        timeout_s: float = 5.0,
        rediscover_s: float = 300.0,
        max_stuck_calls: int = 4,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._timeout_s = timeout_s
        self._rediscover_s = rediscover_s
        self._incomplete_retry_s = 30.0
        self._clock = clock
        self._worker = NvmlWorker(timeout_s, max_stuck=max_stuck_calls)
        self._pynvml: Any = None
        self._gpus: list[_Gpu] = []
        self._discovered_at = 0.0
        self._rediscover_due = False
        self._use_processes_v2 = False
        self.driver_version: str | None = None

    # -- life cycle ---------------------------------------------------------------------

    def open(self) -> NvmlReader:
        try:
            import pynvml
        except ImportError as exc:  # pragma: no cover - a declared dependency
            raise NvmlUnavailable("nvidia-ml-py is not installed: pip install nvidia-ml-py") from exc
        self._pynvml = pynvml
        try:
            self._worker.call("init", pynvml.nvmlInit)
            self.driver_version = self._worker.call("init", pynvml.nvmlSystemGetDriverVersion)
            count = self._worker.call("init", pynvml.nvmlDeviceGetCount)
        except (pynvml.NVMLError, NvmlCallTimeout) as exc:
            raise _unavailable(pynvml, exc) from exc
        if count == 0:
            self.close()
            raise NvmlUnavailable(f"NVML (driver {self.driver_version}) sees no GPU on this node")
        self._discover(count)
        if not self._gpus:
            self.close()
            raise NvmlUnavailable(f"none of the {count} GPUs NVML reports could be read")
        log.info(
            "nvml opened",
            extra={"driver_version": self.driver_version, "gpus": len(self._gpus),
                   "devices": sum(len(g.devices) for g in self._gpus)},
        )
        return self

    def close(self) -> None:
        if self._pynvml is None:
            return
        try:
            self._worker.call("shutdown", self._pynvml.nvmlShutdown)
        except (self._pynvml.NVMLError, NvmlCallTimeout) as exc:
            log.warning("nvml shutdown failed", extra={"error": str(exc)})
        self._worker.stop()
        self._pynvml = None

    def __enter__(self) -> NvmlReader:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def devices(self) -> list[DeviceInfo]:
        """The devices found at the last discovery, GPU by GPU."""
        return [d for g in self._gpus for d in g.devices]

    # -- discovery ----------------------------------------------------------------------

    def _discover(self, count: int | None = None) -> None:
        nv = self._pynvml
        if count is None:
            try:
                count = self._worker.call("discover", nv.nvmlDeviceGetCount)
            except (nv.NVMLError, NvmlCallTimeout) as exc:
                log.warning("rediscovery failed, keeping the old layout", extra={"error": str(exc)})
                self._discovered_at = self._clock()
                return
        known = {g.info.gpu_uuid: g for g in self._gpus}
        key_of_index = {g.index: g.info.gpu_uuid for g in self._gpus}
        found: list[_Gpu] = []
        for index in range(count):
            key = key_of_index.get(index, f"gpu-index-{index}")  # a stuck GPU stays skipped
            try:
                found.append(self._worker.call(key, self._discover_gpu, index))
            except (nv.NVMLError, NvmlCallTimeout, nv.NVMLLibraryMismatchError) as exc:
                log.warning("gpu not readable at discovery", extra={"index": index, "error": str(exc)})
        # A GPU known before that did not answer now keeps its place (it will be flagged).
        uuids = {g.info.gpu_uuid for g in found}
        found.extend(g for uuid, g in known.items() if uuid not in uuids)
        self._gpus = found
        self._discovered_at = self._clock()
        self._rediscover_due = False
        if len(uuids) < count:  # a GPU did not answer: look again soon, not in rediscover_s
            self._discovered_at -= max(0.0, self._rediscover_s - self._incomplete_retry_s)

    def _discover_gpu(self, index: int) -> _Gpu:
        """Runs on the worker: identity and MIG layout of one physical GPU."""
        nv = self._pynvml
        handle = nv.nvmlDeviceGetHandleByIndex(index)
        uuid = nv.nvmlDeviceGetUUID(handle)
        model = nv.nvmlDeviceGetName(handle)
        serial = self._optional(nv.nvmlDeviceGetSerial, handle)
        pci = self._optional(nv.nvmlDeviceGetPciInfo, handle)
        memory = nv.nvmlDeviceGetMemoryInfo(handle)
        info = DeviceInfo(
            gpu_uuid=uuid,
            device_uuid=uuid,
            gpu_model=model,
            serial=serial,
            pci_bus_id=_text(pci.busId) if pci is not None else None,
            memory_total_bytes=memory.total,
        )
        mode = self._optional(nv.nvmlDeviceGetMigMode, handle)
        if not mode or mode[0] != nv.NVML_DEVICE_MIG_ENABLE:
            return _Gpu(index, handle, info, [], False)
        max_slices, profile_names = self._mig_profiles(handle)
        migs = []
        for slot in range(nv.nvmlDeviceGetMaxMigDeviceCount(handle)):
            try:
                mig_handle = nv.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
            except nv.NVMLError_NotFound:
                continue  # an empty slot
            migs.append(_Mig(mig_handle, self._mig_info(info, mig_handle, max_slices, profile_names)))
        return _Gpu(index, handle, info, migs, True)

    def _mig_profiles(self, handle: Any) -> tuple[int, dict[tuple[int, int], str]]:
        """The GPU's maximum slice count and its profile names by (slices, memory MB)."""
        nv = self._pynvml
        max_slices = 0
        names: dict[tuple[int, int], str] = {}
        for profile_id in range(nv.NVML_GPU_INSTANCE_PROFILE_COUNT):
            try:
                p = nv.nvmlDeviceGetGpuInstanceProfileInfo(handle, profile_id)
            except (nv.NVMLError_NotSupported, nv.NVMLError_InvalidArgument):
                continue
            max_slices = max(max_slices, p.sliceCount)
            names[(p.sliceCount, p.memorySizeMB)] = _text(p.name).removeprefix("MIG ")
        if not max_slices:  # old driver without profile info: one MIG device per slice
            max_slices = nv.nvmlDeviceGetMaxMigDeviceCount(handle)
        return max_slices, names

    def _mig_info(
        self, gpu: DeviceInfo, handle: Any, max_slices: int, names: dict[tuple[int, int], str]
    ) -> DeviceInfo:
        nv = self._pynvml
        attrs = nv.nvmlDeviceGetAttributes(handle)
        gi_slices, ci_slices = attrs.gpuInstanceSliceCount, attrs.computeInstanceSliceCount
        name = nv.nvmlDeviceGetName(handle)
        profile = name.split(" MIG ", 1)[1] if " MIG " in name else None
        if profile is None:
            base = names.get((gi_slices, attrs.memorySizeMB)) or (
                f"{gi_slices}g.{round(attrs.memorySizeMB / 1024)}gb"
            )
            profile = base if ci_slices >= gi_slices else f"{ci_slices}c.{base}"
        # A compute instance smaller than its GPU instance holds only its compute slices.
        slices = min(gi_slices, ci_slices) if ci_slices else gi_slices
        return DeviceInfo(
            gpu_uuid=gpu.gpu_uuid,
            device_uuid=nv.nvmlDeviceGetUUID(handle),
            gpu_model=gpu.gpu_model,
            mig_profile=profile,
            gpu_fraction=min(1.0, slices / max_slices),
            serial=gpu.serial,
            pci_bus_id=gpu.pci_bus_id,
            memory_total_bytes=attrs.memorySizeMB << 20,
        )

    # -- sampling -----------------------------------------------------------------------

    def sample(self, timestamp_s: float) -> list[DeviceSample]:
        """One sample per known device; a GPU in trouble yields flagged samples, no readings."""
        if self._pynvml is None:
            raise RuntimeError("NvmlReader.sample() before open()")
        if self._rediscover_due or self._clock() - self._discovered_at >= self._rediscover_s:
            self._discover()
        nv = self._pynvml
        out: list[DeviceSample] = []
        for gpu in self._gpus:
            try:
                out.extend(self._worker.call(gpu.info.gpu_uuid, self._read_gpu, gpu, timestamp_s))
            except nv.NVMLError_GpuIsLost:
                out.extend(self._flagged(gpu, timestamp_s, Flag.GPU_LOST))
            except NvmlCallTimeout:
                log.warning("nvml call timed out", extra={"gpu_uuid": gpu.info.gpu_uuid})
                out.extend(self._flagged(gpu, timestamp_s, Flag.NVML_ERROR))
            except (nv.NVMLError, nv.NVMLLibraryMismatchError) as exc:
                log.warning("nvml error", extra={"gpu_uuid": gpu.info.gpu_uuid, "error": str(exc)})
                self._rediscover_due = True  # stale handles after MIG reconfiguration, reset…
                out.extend(self._flagged(gpu, timestamp_s, Flag.NVML_ERROR))
        return out

    @staticmethod
    def _flagged(gpu: _Gpu, timestamp_s: float, flag: str) -> list[DeviceSample]:
        return [DeviceSample(d, timestamp_s, flags=frozenset({flag})) for d in gpu.devices]

    def _read_gpu(self, gpu: _Gpu, timestamp_s: float) -> list[DeviceSample]:
        """Runs on the worker. GpuIsLost propagates; a failing optional reading is flagged."""
        nv = self._pynvml
        flags: set[str] = set()
        power_mw = self._optional(nv.nvmlDeviceGetPowerUsage, gpu.handle, flags)
        energy_mj = self._optional(nv.nvmlDeviceGetTotalEnergyConsumption, gpu.handle, flags)
        power_w = None if power_mw is None else power_mw / 1000.0
        if not gpu.mig_mode:
            util = self._optional(nv.nvmlDeviceGetUtilizationRates, gpu.handle, flags)
            memory = self._optional(nv.nvmlDeviceGetMemoryInfo, gpu.handle, flags)
            return [
                DeviceSample(
                    gpu.info,
                    timestamp_s,
                    utilisation_percent=None if util is None else float(util.gpu),
                    memory_used_bytes=None if memory is None else memory.used,
                    power_watts=power_w,
                    energy_millijoules=energy_mj,
                    pids=self._pids(gpu.handle, flags),
                    flags=frozenset(flags),
                )
            ]
        samples = []
        for mig in gpu.migs:
            mig_flags = set(flags)
            memory = self._optional(nv.nvmlDeviceGetMemoryInfo, mig.handle, mig_flags)
            pids = self._pids(mig.handle, mig_flags)
            samples.append(
                DeviceSample(
                    mig.info,
                    timestamp_s,
                    utilisation_percent=self._mig_utilisation(mig, pids, mig_flags),
                    memory_used_bytes=None if memory is None else memory.used,
                    power_watts=power_w,  # the physical GPU's, like the energy counter
                    energy_millijoules=energy_mj,
                    pids=pids,
                    flags=frozenset(mig_flags),
                )
            )
        return samples

    def _optional(self, fn: Callable[..., Any], handle: Any, flags: set[str] | None = None) -> Any:
        """A reading the device may not support: NotSupported is ``None``; another error
        is ``None`` plus ``nvml_error``; GpuIsLost propagates to flag the whole GPU."""
        nv = self._pynvml
        try:
            return fn(handle)
        except (nv.NVMLError_NotSupported, nv.NVMLError_FunctionNotFound):
            return None
        except nv.NVMLError_GpuIsLost:
            raise
        except nv.NVMLError as exc:
            if flags is None:
                raise
            if isinstance(exc, nv.NVMLError_InvalidArgument | nv.NVMLError_NotFound):
                self._rediscover_due = True
            flags.add(Flag.NVML_ERROR)
            return None

    def _pids(self, handle: Any, flags: set[str]) -> tuple[int, ...]:
        """Host PIDs of compute processes. Old drivers lack the ``_v3`` symbol, which pynvml
        reports as ``NVMLLibraryMismatchError`` (not an ``NVMLError``): fall back to ``_v2``."""
        nv = self._pynvml
        fn = (
            nv.nvmlDeviceGetComputeRunningProcesses_v2
            if self._use_processes_v2
            else nv.nvmlDeviceGetComputeRunningProcesses
        )
        try:
            procs = fn(handle)
        except nv.NVMLLibraryMismatchError:
            self._use_processes_v2 = True
            log.info("driver lacks nvmlDeviceGetComputeRunningProcesses_v3; using _v2")
            return self._pids(handle, flags)
        except nv.NVMLError_NotSupported:
            return ()
        except nv.NVMLError_GpuIsLost:
            raise
        except nv.NVMLError:
            flags.add(Flag.NVML_ERROR)
            return ()
        return tuple(sorted({p.pid for p in procs}))

    def _mig_utilisation(self, mig: _Mig, pids: tuple[int, ...], flags: set[str]) -> float | None:
        """MIG devices have no plain utilisation. Try it (a future driver may answer), then
        per-process SM utilisation, then occupancy (100 % while a compute process runs),
        and flag ``utilisation_fallback`` whenever the plain reading was not available."""
        nv = self._pynvml
        try:
            return float(nv.nvmlDeviceGetUtilizationRates(mig.handle).gpu)
        except (nv.NVMLError_NotSupported, nv.NVMLError_FunctionNotFound):
            pass
        flags.add(Flag.UTILISATION_FALLBACK)
        try:
            samples = nv.nvmlDeviceGetProcessUtilization(mig.handle, mig.last_process_sample_us)
        except (nv.NVMLError_NotSupported, nv.NVMLError_FunctionNotFound, nv.NVMLError_NotFound):
            return 100.0 if pids else 0.0
        except nv.NVMLError_GpuIsLost:
            raise
        except nv.NVMLError as exc:
            if exc.value == nv.NVML_SUCCESS:
                return 0.0  # pynvml's trap: "success, zero processes" raised as NVMLError(0)
            flags.add(Flag.NVML_ERROR)
            return 100.0 if pids else 0.0
        per_pid: dict[int, int] = {}
        for s in samples:
            per_pid[s.pid] = max(per_pid.get(s.pid, 0), s.smUtil)
            mig.last_process_sample_us = max(mig.last_process_sample_us, s.timeStamp)
        return float(min(100, sum(per_pid.values())))
