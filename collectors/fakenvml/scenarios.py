"""Ready-made nodes for tests, ``collect --simulate`` and the benchmark.

Identifiers are deterministic (derived from the node name and GPU index) so events made from
them have stable ids run after run.
"""

from __future__ import annotations

import uuid as uuidlib

from collectors.fakenvml.model import FakeGpu, FakeMig, FakeProcess, MigProfile, Scenario

GIB = 1 << 30

# NVML_GPU_INSTANCE_PROFILE_* ids: 1 slice 0x0, 2 slice 0x1, 3 slice 0x2, 4 slice 0x3,
# 7 slice 0x4, 8 slice 0x5, 6 slice 0x6, 1 slice rev1 0x7.
H100_PROFILES = (
    MigProfile(0x0, 1, 9_856, "1g.10gb"),
    MigProfile(0x7, 1, 19_968, "1g.20gb"),
    MigProfile(0x1, 2, 19_968, "2g.20gb"),
    MigProfile(0x2, 3, 40_192, "3g.40gb"),
    MigProfile(0x3, 4, 40_192, "4g.40gb"),
    MigProfile(0x4, 7, 80_384, "7g.80gb"),
)
B200_PROFILES = (
    MigProfile(0x0, 1, 23_040, "1g.23gb"),
    MigProfile(0x7, 1, 45_312, "1g.45gb"),
    MigProfile(0x1, 2, 45_312, "2g.45gb"),
    MigProfile(0x2, 3, 90_112, "3g.90gb"),
    MigProfile(0x3, 4, 90_112, "4g.90gb"),
    MigProfile(0x4, 7, 181_248, "7g.180gb"),
)
A30_PROFILES = (  # a GPU whose maximum is 4 slices, not 7
    MigProfile(0x0, 1, 5_836, "1g.6gb"),
    MigProfile(0x1, 2, 11_968, "2g.12gb"),
    MigProfile(0x3, 4, 24_064, "4g.24gb"),
)
MODELS = {
    "NVIDIA B200": (183 * GIB, B200_PROFILES),
    "NVIDIA H100 80GB HBM3": (80 * GIB, H100_PROFILES),
    "NVIDIA A30": (24 * GIB, A30_PROFILES),
}


def _uuid(prefix: str, *parts: object) -> str:
    return f"{prefix}-{uuidlib.uuid5(uuidlib.NAMESPACE_URL, '/'.join(map(str, parts)))}"


def gpu(node: str, index: int, model: str = "NVIDIA B200", **fields: object) -> FakeGpu:
    memory, profiles = MODELS[model]
    defaults: dict[str, object] = dict(
        uuid=_uuid("GPU", node, index),
        name=model,
        serial=f"16520{uuidlib.uuid5(uuidlib.NAMESPACE_URL, f'{node}/{index}').int % 10**8:08d}",
        pci_bus_id=f"00000000:{0x18 + 0x10 * index:02X}:00.0",
        memory_total_bytes=memory,
        memory_used_bytes=0,
        utilisation_percent=0,
        power_milliwatts=140_000,
        energy_millijoules=1_000_000_000 + index * 7_000_000,
        profiles=profiles,
    )
    defaults.update(fields)
    return FakeGpu(**defaults)  # type: ignore[arg-type]


def normal_node(node: str = "gpu-node-001", model: str = "NVIDIA B200", count: int = 8) -> Scenario:
    """Eight whole GPUs, each busy with one process (PIDs 4100 + index)."""
    gpus = []
    for index in range(count):
        g = gpu(node, index, model, utilisation_percent=40 + 7 * index % 60,
                memory_used_bytes=(20 + index) * GIB, power_milliwatts=300_000 + 10_000 * index)
        g.processes.append(FakeProcess(pid=4100 + index, used_memory_bytes=(20 + index) * GIB))
        gpus.append(g)
    return Scenario(gpus=gpus)


def mig_node(node: str = "gpu-node-mig") -> Scenario:
    """GPU 0: an H100 split 3g + 2g + 1g + 1g (of 7 slices); GPU 1: an A30 split 2g + 1g + 1g
    (of 4 slices); GPU 2: a whole B200."""
    h100 = gpu(node, 0, "NVIDIA H100 80GB HBM3", mig_enabled=True, power_milliwatts=350_000)
    h100.migs = [
        FakeMig(_uuid("MIG", node, 0, 1), "3g.40gb", gpu_instance_id=1, memory_used_bytes=30 * GIB,
                processes=[FakeProcess(5001, 30 * GIB)]),
        FakeMig(_uuid("MIG", node, 0, 5), "2g.20gb", gpu_instance_id=5, memory_used_bytes=10 * GIB,
                processes=[FakeProcess(5002, 10 * GIB)]),
        FakeMig(_uuid("MIG", node, 0, 13), "1g.10gb", gpu_instance_id=13),
        FakeMig(_uuid("MIG", node, 0, 14), "1g.10gb", gpu_instance_id=14),
    ]
    a30 = gpu(node, 1, "NVIDIA A30", mig_enabled=True, power_milliwatts=120_000)
    a30.migs = [
        FakeMig(_uuid("MIG", node, 1, 3), "2g.12gb", gpu_instance_id=3,
                processes=[FakeProcess(5003, 4 * GIB)]),
        FakeMig(_uuid("MIG", node, 1, 5), "1g.6gb", gpu_instance_id=5),
        FakeMig(_uuid("MIG", node, 1, 6), "1g.6gb", gpu_instance_id=6),
    ]
    whole = gpu(node, 2, "NVIDIA B200", utilisation_percent=90, processes=[FakeProcess(5004, 100 * GIB)])
    return Scenario(gpus=[h100, a30, whole])


def energy_reset_node(node: str = "gpu-node-reset") -> Scenario:
    """Two GPUs; call ``scenario.reset_energy(1)`` between samples for a driver reload."""
    return normal_node(node, count=2)


def lost_gpu_node(node: str = "gpu-node-xid79") -> Scenario:
    """Four GPUs; set ``scenario.gpus[2].lost = True`` to make GPU 2 fall off the bus."""
    return normal_node(node, count=4)


def hung_call_node(node: str = "gpu-node-hang", function: str = "nvmlDeviceGetPowerUsage") -> Scenario:
    """Four GPUs; on GPU 1, ``function`` blocks until ``scenario.release_hangs()``."""
    scenario = normal_node(node, count=4)
    scenario.gpus[1].hang.add(function)
    return scenario


def jobs_node(node: str = "gpu-node-jobs") -> Scenario:
    """Four GPUs matching ``tests/fixtures/proc``: GPU 0 runs Slurm job 1001 (PIDs 2001,
    2002), GPU 1 Slurm job 1002 (PID 2101), GPU 2 a Kubernetes pod (PID 3001), GPU 3 is
    shared by jobs 1001 (PID 2003) and 1002 (PID 2102)."""
    scenario = normal_node(node, count=4)
    layout = {0: (2001, 2002), 1: (2101,), 2: (3001,), 3: (2003, 2102)}
    for index, pids in layout.items():
        scenario.gpus[index].processes = [FakeProcess(pid, 8 * GIB) for pid in pids]
    return scenario
