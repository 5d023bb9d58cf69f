"""Who is using a GPU: from host PIDs to a Slurm job or a Kubernetes pod, and on to a project.

:class:`ProcAttributor` reads the process table through a filesystem root passed in
(``/proc`` on a node, ``tests/fixtures/proc`` in tests). For each compute process NVML
reports on a device:

* **Slurm**: the job id from the cgroup path (``…/job_<id>/…``, cgroup v1 and v2), else
  ``SLURM_JOB_ID`` in ``/proc/<pid>/environ`` (readable by root only). Project: the operator's
  ``job_projects`` (a mapping or a callable, keyed ``slurm:<id>``), else ``SLURM_JOB_ACCOUNT``
  from the environment of any process of the job.
* **Kubernetes**: the pod UID from the cgroup path (``pod<uid>`` with ``-`` or ``_``, systemd
  and cgroupfs drivers). Job id ``k8s:<namespace>/<pod>`` when the pod exposes ``POD_NAMESPACE``
  and ``POD_NAME`` (downward API), else ``k8s:pod-<uid>``. Project: ``job_projects``, else
  ``GPULEDGER_PROJECT`` in the environment (the pod label ``gpuledger.io/project`` passed
  through the downward API), else ``namespace_projects[<namespace>]``.
* **Fallback**: no job on the device → the node's static owner (entity/project) if one is
  configured, else ``project='unattributed'``.

Invariants:

* One owner per device and sample, so a device's usage is never counted twice. When
  processes of two jobs share a device, the job with the most processes there wins (ties:
  the smallest job id), and the owner carries ``shared_gpu``.
* The entity is the one the registry gives the project (``project_entity``). A project the
  registry does not know is not guessed at: the usage becomes ``unattributed`` in the node's
  entity and carries ``unknown_project``, so it lands in the compliance ledger, not on an
  invoice.
* A process is re-read only when its PID is new or reused (its start time changed).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

from collectors.device import DeviceSample, Owner
from streams.schema import UNATTRIBUTED, Flag

UNKNOWN_PROJECT_FLAG = "unknown_project"
DEFAULT_ENTITY = "unassigned"

_SLURM_JOB = re.compile(r"/job_(\d+)(?:/|$)", re.MULTILINE)
_POD_UID = re.compile(
    r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})"
)

JobProjects = Mapping[str, str] | Callable[[str], str | None]


class StaticOwner(Protocol):
    """The node's fallback owner (``gpuledger.settings.StaticOwner`` fits)."""

    entity: str
    project: str


@dataclasses.dataclass(frozen=True, slots=True)
class ProcessJob:
    """What one process belongs to."""

    job_id: str  # "slurm:1001", "k8s:ns/pod" or "k8s:pod-<uid>"
    project: str | None


class ProcAttributor:
    """Maps a sampled device to its owner (a :class:`~collectors.device.Attributor`)."""

    def __init__(
        self,
        proc_root: Path = Path("/proc"),
        static_owner: StaticOwner | None = None,
        project_entity: Mapping[str, str] | None = None,
        job_projects: JobProjects | None = None,
        namespace_projects: Mapping[str, str] | None = None,
    ):
        self._root = Path(proc_root)
        self._static = static_owner
        self._project_entity = dict(project_entity or {})
        self._job_projects = job_projects
        self._namespace_projects = dict(namespace_projects or {})
        self._processes: dict[int, tuple[str, ProcessJob | None]] = {}
        self._job_project_seen: dict[str, str] = {}

    # -- the Attributor protocol --------------------------------------------------------

    def owner(self, sample: DeviceSample) -> Owner:
        jobs: dict[str, int] = {}
        for pid in sample.pids:
            job = self.process_job(pid)
            if job is not None:
                jobs[job.job_id] = jobs.get(job.job_id, 0) + 1
        if not jobs:
            return self._fallback()
        job_id = min(jobs, key=lambda j: (-jobs[j], j))
        flags = frozenset({Flag.SHARED_GPU}) if len(jobs) > 1 else frozenset()
        project = self._project_of(job_id)
        entity = self._project_entity.get(project) if project else None
        if project is None:
            fallback = self._fallback()
            return Owner(fallback.entity, fallback.project, job_id, flags)
        if entity is None:
            return Owner(self._node_entity(), UNATTRIBUTED, job_id, flags | {UNKNOWN_PROJECT_FLAG})
        return Owner(entity, project, job_id, flags)

    # -- processes ----------------------------------------------------------------------

    def process_job(self, pid: int) -> ProcessJob | None:
        """The job of one host PID, or ``None`` (not visible, or not in a job)."""
        start = self._start_time(pid)
        if start is None:
            self._processes.pop(pid, None)
            return None
        cached = self._processes.get(pid)
        if cached is not None and cached[0] == start:
            return cached[1]
        job = self._read_job(pid)
        if len(self._processes) > 65_536:  # bounded: PIDs come and go for months
            self._processes.clear()
        self._processes[pid] = (start, job)
        if job is not None and job.project:
            if len(self._job_project_seen) > 65_536:
                self._job_project_seen.clear()
            self._job_project_seen[job.job_id] = job.project
        return job

    def _read(self, pid: int, name: str) -> bytes | None:
        try:
            return (self._root / str(pid) / name).read_bytes()
        except OSError:  # gone, or environ of another user's process without root
            return None

    def _start_time(self, pid: int) -> str | None:
        stat = self._read(pid, "stat")
        if stat is None:
            return None
        # comm (field 2) may hold spaces and parentheses: split after the last ')'
        fields = stat[stat.rfind(b")") + 2 :].split()
        return fields[19].decode() if len(fields) > 19 else ""

    def _environ(self, pid: int) -> dict[str, str]:
        raw = self._read(pid, "environ")
        if not raw:
            return {}
        env = {}
        for item in raw.split(b"\0"):
            key, sep, value = item.partition(b"=")
            if sep:
                env[key.decode(errors="replace")] = value.decode(errors="replace")
        return env

    def _read_job(self, pid: int) -> ProcessJob | None:
        cgroup = (self._read(pid, "cgroup") or b"").decode(errors="replace")
        env = self._environ(pid)
        slurm = _SLURM_JOB.search(cgroup)
        slurm_id = slurm.group(1) if slurm else env.get("SLURM_JOB_ID")
        if slurm_id:
            return ProcessJob(f"slurm:{slurm_id}", env.get("SLURM_JOB_ACCOUNT") or None)
        pod = _POD_UID.search(cgroup)
        if pod:
            uid = pod.group(1).replace("_", "-")
            namespace, name = env.get("POD_NAMESPACE"), env.get("POD_NAME")
            job_id = f"k8s:{namespace}/{name}" if namespace and name else f"k8s:pod-{uid}"
            project = env.get("GPULEDGER_PROJECT") or (
                self._namespace_projects.get(namespace) if namespace else None
            )
            return ProcessJob(job_id, project)
        return None

    # -- projects and entities ----------------------------------------------------------

    def _project_of(self, job_id: str) -> str | None:
        if self._job_projects is not None:
            given = (
                self._job_projects(job_id)
                if callable(self._job_projects)
                else self._job_projects.get(job_id)
            )
            if given:
                return given
        return self._job_project_seen.get(job_id)

    def _node_entity(self) -> str:
        return self._static.entity if self._static is not None else DEFAULT_ENTITY

    def _fallback(self) -> Owner:
        if self._static is not None:
            return Owner(self._static.entity, self._static.project)
        return Owner(DEFAULT_ENTITY, UNATTRIBUTED)
