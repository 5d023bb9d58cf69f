"""The state the fake NVML reports: GPUs, MIG instances, processes, counters and faults.

A scenario is plain mutable data: tests change it between samples (a GPU falls off the bus, a
job starts, the driver reloads and the energy counter starts again from zero) and the next
NVML call sees the change, the way a real driver would.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import Counter
from collections.abc import Callable


@dataclasses.dataclass(frozen=True, slots=True)
class MigProfile:
    """A GPU-instance profile the GPU supports (``nvmlDeviceGetGpuInstanceProfileInfoV``)."""

    profile_id: int  # NVML_GPU_INSTANCE_PROFILE_* value
    slices: int
    memory_mb: int
    name: str  # e.g. "1g.10gb"


@dataclasses.dataclass(slots=True)
class FakeProcess:
    """A compute process; ``pid`` is a host PID."""

    pid: int
    used_memory_bytes: int = 1 << 30
    sm_util_percent: int = 50


@dataclasses.dataclass(slots=True)
class FakeMig:
    """One MIG device (a compute instance inside a GPU instance)."""

    uuid: str
    profile: str  # must be one of the parent's profile names
    gpu_instance_id: int
    compute_instance_id: int = 0
    compute_slices: int | None = None  # None: the whole GPU instance
    memory_used_bytes: int = 0
    processes: list[FakeProcess] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(slots=True)
class FakeGpu:
    """One physical GPU and its faults.

    Faults: ``lost`` makes every call on the GPU (and its MIG devices) return
    ``NVML_ERROR_GPU_IS_LOST``; a function named in ``unsupported`` returns
    ``NVML_ERROR_NOT_SUPPORTED``; one named in ``hang`` blocks until the scenario's
    :meth:`Scenario.release_hangs` (a driver call that never returns).
    """

    uuid: str
    name: str
    serial: str
    pci_bus_id: str  # "00000000:18:00.0"
    memory_total_bytes: int
    memory_used_bytes: int = 0
    utilisation_percent: int = 0
    memory_utilisation_percent: int = 0
    power_milliwatts: int = 100_000
    energy_millijoules: int = 0
    processes: list[FakeProcess] = dataclasses.field(default_factory=list)
    profiles: tuple[MigProfile, ...] = ()
    mig_enabled: bool = False
    migs: list[FakeMig] = dataclasses.field(default_factory=list)
    lost: bool = False
    unsupported: set[str] = dataclasses.field(default_factory=set)
    hang: set[str] = dataclasses.field(default_factory=set)
    mig_process_utilisation: bool = False  # real drivers: not supported on MIG devices

    def profile(self, name: str) -> MigProfile:
        for profile in self.profiles:
            if profile.name == name:
                return profile
        raise KeyError(f"{self.name} has no MIG profile {name!r}")

    @property
    def max_slices(self) -> int:
        return max((p.slices for p in self.profiles), default=0)


@dataclasses.dataclass(slots=True)
class Scenario:
    """A node as NVML sees it.

    ``missing`` names C symbols the library does not export (an older driver);
    ``init_error`` is the NVML return code of ``nvmlInitWithFlags`` (e.g. 9, driver not
    loaded). ``clock``, when given, drives the energy counters: each read adds
    power × elapsed time since the previous read (used by ``collect --simulate``);
    without it tests move counters explicitly with :meth:`advance`.
    """

    gpus: list[FakeGpu]
    driver_version: str = "580.95.05"
    nvml_version: str = "13.580.95.05"
    missing: set[str] = dataclasses.field(default_factory=set)
    init_error: int = 0
    clock: Callable[[], float] | None = None
    calls: Counter[str] = dataclasses.field(default_factory=Counter)
    _released: threading.Event = dataclasses.field(default_factory=threading.Event)
    _last_clock: float | None = None

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass: every GPU's energy counter grows by power × time."""
        for gpu in self.gpus:
            if not gpu.lost:
                gpu.energy_millijoules += round(gpu.power_milliwatts * seconds)

    def sync_clock(self) -> None:
        if self.clock is None:
            return
        now = self.clock()
        if self._last_clock is not None and now > self._last_clock:
            self.advance(now - self._last_clock)
        self._last_clock = now

    def reset_energy(self, gpu_index: int, to_millijoules: int = 0) -> None:
        """A driver reload: the GPU's total-energy counter starts again."""
        self.gpus[gpu_index].energy_millijoules = to_millijoules

    def wait_while_hung(self, limit_s: float = 600.0) -> None:
        self._released.wait(limit_s)

    def release_hangs(self) -> None:
        """Let every hung call return (tests call it, and uninstalling does)."""
        self._released.set()
