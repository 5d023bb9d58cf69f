"""A simulated fleet: the twin of NVML for the demo and the tests.

Deterministic for a seed. Each node has 8 GPUs of one model and belongs to one entity's pool;
some GPUs are split into MIG instances, for the whole window or from an instant on (a MIG
reconfiguration: the GPU runs whole until then, as its MIG instances after); every device runs
a schedule of jobs (projects of its entity) separated by idle gaps with no owner. One node can go silent for a window (no samples
at all: it shows up as unreported capacity, never as zero-filled usage).

:class:`SimulatedNode` implements ``DeviceReader`` and ``Attributor`` at once: it knows which
job owns each GPU at any time, as the real collector learns from ``/proc``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from collections.abc import Mapping, Sequence

from collectors.device import DeviceInfo, DeviceSample, Owner
from streams.schema import UNATTRIBUTED, Flag

# (profile, slices) over a maximum of 7 slices: one B200 split 3 + 2 + 1 + 1
MIG_LAYOUT: tuple[tuple[str, int], ...] = (("3g.90gb", 3), ("2g.45gb", 2), ("1g.23gb", 1), ("1g.23gb", 1))
MIG_MAX_SLICES = 7
IDLE_WATTS = {"NVIDIA B200": 150.0, "NVIDIA GB200": 170.0, "NVIDIA H100 80GB HBM3": 80.0}
PEAK_WATTS = {"NVIDIA B200": 1000.0, "NVIDIA GB200": 1200.0, "NVIDIA H100 80GB HBM3": 700.0}


def _uuid(prefix: str, *parts: object) -> str:
    h = hashlib.sha256("/".join(str(p) for p in parts).encode()).hexdigest()
    return f"{prefix}-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


@dataclasses.dataclass(frozen=True, slots=True)
class Job:
    start_s: float
    end_s: float
    project: str
    job_id: str
    utilisation_percent: float


@dataclasses.dataclass(frozen=True, slots=True)
class NodeSpec:
    name: str
    entity: str
    gpu_model: str
    gpus: int = 8
    mig_gpus: int = 0  # how many of its GPUs are split with MIG_LAYOUT
    # None: split for the whole window; else they run whole before this instant and split from
    # it on (a reconfiguration: the whole GPU's jobs end by then, the instances' start after)
    mig_from_s: float | None = None
    silent_from_s: float | None = None
    silent_to_s: float | None = None
    lost_gpu_from_s: float | None = None  # from then its first GPU is off the bus (Xid 79): gpu_lost samples


class SimulatedNode:
    """One node's devices, jobs and energy counters over ``[start_s, end_s)``."""

    def __init__(
        self,
        spec: NodeSpec,
        projects: Sequence[str],
        start_s: float,
        end_s: float,
        seed: int = 7,
    ):
        self.spec = spec
        rng = random.Random(f"{seed}/{spec.name}")
        self._whole: list[DeviceInfo] = []  # the layout before mig_from_s
        self._split: list[DeviceInfo] = []  # the layout from mig_from_s on (or always)
        self.devices: list[DeviceInfo] = []  # every device of the window, in GPU order
        windows: dict[str, tuple[float, float]] = {}  # device → when it exists
        self._jobs: dict[str, list[Job]] = {}
        self._energy_mj: dict[str, float] = {}
        mig_from = spec.mig_from_s if spec.mig_from_s is not None else start_s
        for index in range(spec.gpus):
            gpu_uuid = _uuid("GPU", spec.name, index)
            whole = DeviceInfo(gpu_uuid, gpu_uuid, spec.gpu_model)
            if index < spec.mig_gpus:
                if mig_from > start_s:
                    self._whole.append(whole)
                    self.devices.append(whole)
                    windows[whole.device_uuid] = (start_s, mig_from)
                for slot, (profile, slices) in enumerate(MIG_LAYOUT):
                    instance = DeviceInfo(gpu_uuid, _uuid("MIG", spec.name, index, slot), spec.gpu_model,
                                          profile, slices / MIG_MAX_SLICES)
                    self._split.append(instance)
                    self.devices.append(instance)
                    windows[instance.device_uuid] = (mig_from, end_s)
            else:
                self._whole.append(whole)
                self._split.append(whole)
                self.devices.append(whole)
                windows[whole.device_uuid] = (start_s, end_s)
            self._energy_mj[gpu_uuid] = rng.uniform(1e9, 5e9)
        self._mig_from_s = mig_from
        for device in self.devices:
            self._jobs[device.device_uuid] = _schedule(rng, projects, *windows[device.device_uuid], spec.name)

    def devices_at(self, timestamp_s: float) -> list[DeviceInfo]:
        """The devices NVML lists at ``timestamp_s``: the split layout from the reconfiguration on."""
        return self._split if timestamp_s >= self._mig_from_s else self._whole

    def _job_at(self, device: DeviceInfo, timestamp_s: float) -> Job | None:
        for job in self._jobs[device.device_uuid]:
            if job.start_s <= timestamp_s < job.end_s:
                return job
        return None

    def silent(self, timestamp_s: float) -> bool:
        spec = self.spec
        return (
            spec.silent_from_s is not None
            and spec.silent_to_s is not None
            and spec.silent_from_s <= timestamp_s < spec.silent_to_s
        )

    def sample(self, timestamp_s: float, period_s: float = 10.0) -> list[DeviceSample]:
        """One sample per device; nothing while the node is silent."""
        if self.silent(timestamp_s):
            return []
        model = self.spec.gpu_model
        idle, peak = IDLE_WATTS.get(model, 100.0), PEAK_WATTS.get(model, 700.0)
        jobs = [(device, self._job_at(device, timestamp_s)) for device in self.devices_at(timestamp_s)]
        util_by_gpu: dict[str, float] = {}
        for device, job in jobs:
            util = job.utilisation_percent if job else 0.0
            util_by_gpu[device.gpu_uuid] = util_by_gpu.get(device.gpu_uuid, 0.0) + util * device.gpu_fraction
        for gpu, util in util_by_gpu.items():
            self._energy_mj[gpu] += (idle + (peak - idle) * util / 100.0) * period_s * 1000.0
        lost = self._lost_gpu(timestamp_s)
        return [
            DeviceSample(device=device, timestamp_s=timestamp_s, flags=frozenset({Flag.GPU_LOST}))
            if device.gpu_uuid == lost
            else DeviceSample(
                device=device,
                timestamp_s=timestamp_s,
                utilisation_percent=job.utilisation_percent if job else 0.0,
                energy_millijoules=int(self._energy_mj[device.gpu_uuid]),
                pids=(1000 + (abs(hash(job.job_id)) % 30000),) if job else (),
            )
            for device, job in jobs
        ]

    def _lost_gpu(self, timestamp_s: float) -> str | None:
        """The UUID of the GPU that fell off the bus, once it has (NVML answers GpuIsLost for it)."""
        lost_from = self.spec.lost_gpu_from_s
        return self._split[0].gpu_uuid if lost_from is not None and timestamp_s >= lost_from else None

    def owner(self, sample: DeviceSample) -> Owner:
        job = self._job_at(sample.device, sample.timestamp_s)
        if job is None:
            return Owner(self.spec.entity, UNATTRIBUTED, None)
        return Owner(self.spec.entity, job.project, job.job_id)


def _schedule(rng: random.Random, projects: Sequence[str], start_s: float, end_s: float, node: str) -> list[Job]:
    jobs: list[Job] = []
    t = start_s + rng.uniform(0, 6 * 3600)
    while t < end_s:
        length = rng.uniform(4 * 3600, 72 * 3600)
        project = rng.choice(list(projects))
        job_id = f"slurm:{rng.randrange(100000, 999999)}"
        jobs.append(Job(t, min(t + length, end_s), project, job_id, rng.uniform(35.0, 98.0)))
        t += length + rng.expovariate(1 / (8 * 3600))
    return jobs
