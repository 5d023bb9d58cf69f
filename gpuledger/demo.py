"""``gpuledger demo``: a simulated month through the whole pipeline on one machine.

collectors (simulated fleet) → publisher → bus (embedded local log, or Kafka) → stream
consumer → Parquet → monthly close → summary → report and finance pack. Time is simulated: the fleet is sampled every
``sample_period_s`` of simulated time and events cover ``interval_s`` (both divide the hour),
so a month runs in about a minute. The consumer runs after each simulated day, as the real one
runs continuously beside the collectors.

By default the demo runs against the *demo programme* registry (``examples/registry-demo.toml``):
the national programme scaled to the simulated fleet, so coverage, utilisation and amounts
read like a real month. Its data directory carries a marker file
(:data:`accounting.figures.SIMULATED_MARKER`) that makes every report and statement drawn
from it say "simulated data", and that allows a re-run to clear the directory.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from accounting.figures import SIMULATED_MARKER
from accounting.registry import Registry
from accounting.usage import parse_month
from collectors.integrate import IntervalIntegrator
from collectors.publish import DirectPublisher
from collectors.simulated import NodeSpec, SimulatedNode
from storage.errors import GpuledgerError
from streams.consumer import RunTotals

DEMO_MARKER = SIMULATED_MARKER
DEMO_REGISTRY = "registry-demo.toml"
KST = timedelta(hours=9)


@dataclasses.dataclass(frozen=True, slots=True)
class DemoPlan:
    period: str  # KST month simulated
    start_s: int
    end_s: int
    nodes: tuple[NodeSpec, ...]
    interval_s: int = 3600
    sample_period_s: int = 1200


def previous_month(now: datetime) -> str:
    """The last complete KST month before ``now``."""
    kst = now.astimezone(UTC) + KST
    first = kst.replace(day=1)
    last_month = first - timedelta(days=1)
    return last_month.strftime("%Y-%m")


def month_bounds_s(period: str) -> tuple[int, int]:
    """UTC epoch seconds of the first and one-past-last instant of a KST month."""
    month = parse_month(period)
    return int(month.start_utc.timestamp()), int(month.end_utc.timestamp())


def plan(registry: Registry, period: str, nodes_per_entity: int = 8) -> DemoPlan:
    """A fleet of ``nodes_per_entity`` 8-GPU nodes per entity over the models it is allocated.

    The first gov node splits two GPUs into MIG instances; the second node of samsung goes
    silent for two days in the middle of the month.
    """
    start_s, end_s = month_bounds_s(period)
    specs = []
    for entity in sorted(registry.entities):
        models = sorted({a.gpu_model for a in registry.entities[entity].allocations})
        for i in range(nodes_per_entity):
            name = f"{entity}-n{i:02d}"
            silent = (start_s + 12 * 86400, start_s + 14 * 86400) if (entity, i) == ("samsung", 1) else (None, None)
            specs.append(
                NodeSpec(
                    name=name,
                    entity=entity,
                    gpu_model=models[i % len(models)],
                    mig_gpus=2 if (entity, i) == ("gov", 0) else 0,
                    silent_from_s=silent[0],
                    silent_to_s=silent[1],
                )
            )
    return DemoPlan(period, start_s, end_s, tuple(specs))


KEPT_ON_RERUN = ("reports", "exports")  # what a person made from a demo month survives a re-run


def prepare_data_dir(data_dir: Path) -> None:
    """Start from a clean directory; refuse to wipe one that was not made by the demo.

    A re-run clears the demo's datasets but keeps ``reports/`` and ``exports/``.
    """
    if data_dir.exists() and any(data_dir.iterdir()):
        if not (data_dir / DEMO_MARKER).exists():
            raise GpuledgerError(
                f"{data_dir} already holds data that the demo did not make; "
                "pass an empty --data-dir (e.g. --data-dir ./gpuledger-demo)"
            )
        for child in data_dir.iterdir():
            if child.name in KEPT_ON_RERUN:
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / DEMO_MARKER).write_text(
        "simulated data: made by gpuledger demo (a simulated fleet, not real usage); "
        "reports and statements drawn from it say so; the demo clears this directory\n"
    )


def demo_registry_path() -> Path:
    """The demo programme registry, shipped beside the national sample (``examples/``)."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "examples" / DEMO_REGISTRY, here / "examples" / DEMO_REGISTRY):
        if candidate.is_file():
            return candidate
    raise GpuledgerError(f"the demo registry {DEMO_REGISTRY} is not installed beside gpuledger; pass --registry FILE")


def simulate(
    demo: DemoPlan,
    registry: Registry,
    publisher: DirectPublisher,
    drain: Callable[[], RunTotals],
    on_day: Callable[[int, int, int], None] | None = None,
) -> tuple[int, RunTotals]:
    """Run the fleet over the month; returns (events published, consumer totals)."""
    projects_of: dict[str, list[str]] = {}
    for name, project in registry.projects.items():
        projects_of.setdefault(project.entity, []).append(name)
    nodes = [
        SimulatedNode(spec, sorted(projects_of.get(spec.entity, [])) or ["unattributed"], demo.start_s, demo.end_s)
        for spec in demo.nodes
    ]
    integrators = [
        IntervalIntegrator("demo-dc", node.spec.name, demo.interval_s, demo.sample_period_s, node) for node in nodes
    ]
    totals = RunTotals()
    published = 0
    days = (demo.end_s - demo.start_s) // 86400
    day_s = 86400
    for day in range(days):
        for ts in range(demo.start_s + day * day_s, demo.start_s + (day + 1) * day_s, demo.sample_period_s):
            for node, integrator in zip(nodes, integrators, strict=True):
                samples = node.sample(ts, demo.sample_period_s)
                events = integrator.add(samples) if samples else integrator.advance(ts)
                if events:
                    publisher.publish(node.spec.name, events)
                    published += len(events)
        publisher.flush()
        _merge(totals, drain())
        if on_day is not None:
            on_day(day + 1, days, published)
    for node, integrator in zip(nodes, integrators, strict=True):
        events = integrator.advance(demo.end_s)
        if events:
            publisher.publish(node.spec.name, events)
            published += len(events)
    publisher.flush()
    _merge(totals, drain())
    return published, totals


def _merge(totals: RunTotals, more: RunTotals) -> None:
    totals.batches += more.batches
    totals.messages += more.messages
    totals.accepted += more.accepted
    totals.refused += more.refused
    totals.duplicates += more.duplicates


def report_and_export(store, registry: Registry, period: str, registry_file: Path) -> list[tuple[str, Path]]:
    """Draw the month's report and write its finance and auditor packs; (label, path) to print."""
    from accounting.export import export_month
    from accounting.report import render_report

    report = render_report(store, period, registry=registry)
    packs = export_month(store, period, registry=registry, registry_file=registry_file)
    return [
        ("report:           ", report.out_dir / "report.html"),
        ("finance pack:     ", packs.out_dir / "finance"),
        ("auditor pack:     ", packs.out_dir / "auditor"),
    ]
