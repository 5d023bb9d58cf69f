"""ProcAttributor over the checked-in /proc fixture tree (tests/fixtures/proc)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from collectors.attribution import ProcAttributor
from collectors.device import DeviceInfo, DeviceSample, Owner
from collectors.fakenvml import installed, scenarios
from collectors.nvml import NvmlReader
from gpuledger.settings import StaticOwner

pytestmark = pytest.mark.unit

PROC = Path(__file__).resolve().parents[1] / "fixtures" / "proc"
PROJECT_ENTITY = {
    "snu-llm": "gov",
    "kaist-vision": "gov",
    "upstage-pretrain": "gov",
    "naver-hyperclova": "naver",
    "skt-ax": "skt",
}
NODE_OWNER = StaticOwner(entity="gov", project="unattributed")
DEVICE = DeviceInfo(gpu_uuid="GPU-0", device_uuid="GPU-0", gpu_model="NVIDIA B200")


def owner_of(attributor: ProcAttributor, *pids: int) -> Owner:
    return attributor.owner(DeviceSample(DEVICE, 0.0, pids=pids))


@pytest.fixture
def attributor() -> ProcAttributor:
    return ProcAttributor(
        PROC,
        static_owner=NODE_OWNER,
        project_entity=PROJECT_ENTITY,
        namespace_projects={"hyperclova-train": "naver-hyperclova"},
    )


@pytest.mark.parametrize(
    ("pids", "expected"),
    [
        ((2001,), Owner("gov", "snu-llm", "slurm:1001")),  # cgroup v2 path + SLURM_JOB_ACCOUNT
        ((2001, 2002), Owner("gov", "snu-llm", "slurm:1001")),  # 2002: environ unreadable
        ((2101,), Owner("gov", "kaist-vision", "slurm:1002")),  # cgroup v1 path
        ((3001,), Owner("naver", "naver-hyperclova", "k8s:hyperclova-train/trainer-0")),
        ((3002,), Owner("skt", "skt-ax", "k8s:ax-serving/infer-7f9c")),  # label via env
    ],
)
def test_processes_map_to_their_job_and_project(attributor, pids, expected):
    assert owner_of(attributor, *pids) == expected


def test_a_job_known_only_from_its_environment(attributor):
    assert owner_of(attributor, 2201) == Owner("gov", "unattributed", "slurm:1003")
    mapped = ProcAttributor(PROC, NODE_OWNER, PROJECT_ENTITY, job_projects={"slurm:1003": "upstage-pretrain"})
    assert owner_of(mapped, 2201) == Owner("gov", "upstage-pretrain", "slurm:1003")


def test_job_projects_may_be_a_callable_and_wins_over_the_account(attributor):
    asked = []

    def lookup(job_id: str) -> str | None:
        asked.append(job_id)
        return "kaist-vision" if job_id == "slurm:1001" else None

    attributed = ProcAttributor(PROC, NODE_OWNER, PROJECT_ENTITY, job_projects=lookup)
    assert owner_of(attributed, 2001).project == "kaist-vision"
    assert owner_of(attributed, 2101).project == "kaist-vision"  # callable said None: account
    assert asked == ["slurm:1001", "slurm:1002"]


def test_environ_unreadable_and_no_other_process_of_the_job_seen(attributor):
    assert owner_of(attributor, 2002) == Owner("gov", "unattributed", "slurm:1001")


def test_pod_without_downward_api_is_named_by_uid(attributor):
    assert owner_of(attributor, 3003) == Owner(
        "gov", "unattributed", "k8s:pod-0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b"
    )


def test_unknown_project_is_unattributed_and_flagged_not_invoiced(attributor):
    owner = owner_of(attributor, 2301)
    assert (owner.entity, owner.project, owner.job_id) == ("gov", "unattributed", "slurm:1004")
    assert owner.flags == frozenset({"unknown_project"})


@pytest.mark.parametrize("pids", [(), (4001,), (99999,)])
def test_no_job_falls_back_to_the_static_owner(attributor, pids):
    assert owner_of(attributor, *pids) == Owner("gov", "unattributed")
    fixed = ProcAttributor(PROC, StaticOwner(entity="samsung", project="samsung-foundry-ai"), PROJECT_ENTITY)
    assert owner_of(fixed, *pids) == Owner("samsung", "samsung-foundry-ai")
    bare = ProcAttributor(PROC, None, PROJECT_ENTITY)
    assert owner_of(bare, *pids).project == "unattributed"


def test_gpu_shared_by_two_jobs_has_one_owner_and_a_flag(attributor):
    tie = owner_of(attributor, 2003, 2102)
    assert (tie.project, tie.job_id, tie.flags) == ("snu-llm", "slurm:1001", frozenset({"shared_gpu"}))
    majority = owner_of(attributor, 2003, 2101, 2102)
    assert (majority.project, majority.job_id, majority.flags) == (
        "kaist-vision", "slurm:1002", frozenset({"shared_gpu"})
    )


def test_a_reused_pid_is_read_again_and_a_known_one_is_not(tmp_path):
    root = tmp_path / "proc"
    shutil.copytree(PROC, root)
    attributor = ProcAttributor(root, NODE_OWNER, PROJECT_ENTITY)
    assert owner_of(attributor, 2101).job_id == "slurm:1002"
    # same process (same start time): the cgroup is not read again
    (root / "2101" / "cgroup").write_text("0::/system.slice/slurmstepd.scope/job_7/step_0\n")
    assert owner_of(attributor, 2101).job_id == "slurm:1002"
    # the PID now belongs to a new process: new start time, new job
    stat = root / "2101" / "stat"
    stat.write_text(stat.read_text().replace(" 102101 ", " 902101 "))
    assert owner_of(attributor, 2101).job_id == "slurm:7"
    shutil.rmtree(root / "2101")  # the process exited
    assert owner_of(attributor, 2101) == Owner("gov", "unattributed")


def test_reader_pids_are_attributed_per_gpu():
    scenario = scenarios.jobs_node()
    attributor = ProcAttributor(PROC, NODE_OWNER, PROJECT_ENTITY, namespace_projects={"hyperclova-train": "naver-hyperclova"})
    with installed(scenario), NvmlReader() as reader:
        owners = [attributor.owner(s) for s in reader.sample(0.0)]
    assert [(o.project, o.job_id, sorted(o.flags)) for o in owners] == [
        ("snu-llm", "slurm:1001", []),
        ("kaist-vision", "slurm:1002", []),
        ("naver-hyperclova", "k8s:hyperclova-train/trainer-0", []),
        ("snu-llm", "slurm:1001", ["shared_gpu"]),
    ]
