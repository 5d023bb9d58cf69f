"""What the collector reads from the hardware: device descriptions and samples.

:class:`DeviceReader` is the one door to NVML. The real implementation lives in
``collectors/nvml.py`` (pynvml); :mod:`collectors.simulated` is the twin the demo and the unit
tests use. Everything downstream (integration into events, attribution, publishing) sees only
these types.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol


@dataclasses.dataclass(frozen=True, slots=True)
class DeviceInfo:
    """A device the collector accounts for: a whole GPU or one MIG instance.

    ``gpu_fraction`` is the share of the physical GPU: 1.0 for a whole GPU, or the MIG
    instance's slice count over the GPU's maximum slice count (not always 7).
    """

    gpu_uuid: str
    device_uuid: str
    gpu_model: str
    mig_profile: str | None = None
    gpu_fraction: float = 1.0
    serial: str | None = None
    pci_bus_id: str | None = None
    memory_total_bytes: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class DeviceSample:
    """One reading of one device at ``timestamp_s`` (UNIX seconds, UTC).

    ``energy_millijoules`` is the *physical GPU's* total-energy counter (mJ since driver
    load); MIG instances of one GPU carry the same counter and the integrator apportions it.
    ``pids`` are host PIDs of compute processes on the device, for attribution.
    ``flags`` carries per-sample quality flags (``gpu_lost``, ``nvml_error``,
    ``utilisation_fallback``…), which the event inherits.
    """

    device: DeviceInfo
    timestamp_s: float
    utilisation_percent: float | None = None
    memory_used_bytes: int | None = None
    power_watts: float | None = None
    energy_millijoules: int | None = None
    pids: tuple[int, ...] = ()
    flags: frozenset[str] = frozenset()


@dataclasses.dataclass(frozen=True, slots=True)
class Owner:
    """Who a device's usage belongs to over a sample."""

    entity: str
    project: str
    job_id: str | None = None
    flags: frozenset[str] = frozenset()


class DeviceReader(Protocol):
    """Reads every device of one node."""

    def sample(self, timestamp_s: float) -> list[DeviceSample]:
        """One sample per device that answered; a device that did not is simply absent
        (or present with a ``gpu_lost``/``nvml_error`` flag and no readings)."""


class Attributor(Protocol):
    """Maps a sampled device to the entity/project/job using it."""

    def owner(self, sample: DeviceSample) -> Owner:
        """The owner; ``project='unattributed'`` when no job can be found."""


class Clock(Protocol):
    """The time source; passed in, never read in the core."""

    def __call__(self) -> float:
        """UNIX seconds, UTC."""
