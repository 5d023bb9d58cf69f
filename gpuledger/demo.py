"""``gpuledger demo``: a simulated month through the whole pipeline on one machine.

collectors (simulated fleet) → publisher → bus (embedded local log, or Kafka) → stream
consumer → Parquet → monthly close → summary → report and finance pack. Time is simulated: the fleet is sampled every
``sample_period_s`` of simulated time and events cover ``interval_s`` (both divide the hour),
so a month runs in about a minute. The consumer runs after each simulated day, as the real one
runs continuously beside the collectors.

By default the demo runs against the *demo programme* registry (``examples/registry-demo.toml``):
the national programme scaled to the simulated fleet, so coverage, utilisation and amounts
read like a real month, and by default it simulates :data:`DEMO_MONTH`, the month that
registry is written for (its rate cards change in the middle of it).

The fleet also runs the last day of the month before, and that month is closed first, as
the real schedule closes it on the 1st: some of its events reach the bus only after that
close (a spool drains), so the demo month's close bills them as ``correction`` lines of the
previous month (STYLE.md 6: late data is a business event; its ledgers are never rewritten).

The data directory carries a marker file (:data:`accounting.figures.SIMULATED_MARKER`) that
makes every report and statement drawn from it say "simulated data", and that allows a
re-run to clear the directory.
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
from streams.schema import UsageEvent

DEMO_MARKER = SIMULATED_MARKER
DEMO_REGISTRY = "registry-demo.toml"
# The month examples/registry-demo.toml is written for: Naver's GB200 rate card changes on
# its 16th. Another --month runs the same fleet and failure modes at that month's rates.
DEMO_MONTH = "2026-10"
KST = timedelta(hours=9)
DAY_S = 86400


@dataclasses.dataclass(frozen=True, slots=True)
class Late:
    """A node's events of intervals starting in ``[from_s, to_s)`` reach the bus only at
    ``released_s`` (a day start), as its spool drains after an outage: late, stored once."""

    node: str
    from_s: int
    to_s: int
    released_s: int

    def holds(self, node: str, interval_start_s: int) -> bool:
        return node == self.node and self.from_s <= interval_start_s < self.to_s


@dataclasses.dataclass(frozen=True, slots=True)
class DemoPlan:
    period: str  # KST month simulated
    start_s: int
    end_s: int
    nodes: tuple[NodeSpec, ...]
    interval_s: int = 3600
    sample_period_s: int = 1200
    late: tuple[Late, ...] = ()
    previous: str | None = None  # the KST month before, of which the fleet runs the last day
    lead_in_s: int = 0  # how much of ``previous`` is simulated before ``start_s`` (whole days)

    @property
    def first_s(self) -> int:
        """Where the simulation starts: the lead-in of the previous month, then the month."""
        return self.start_s - self.lead_in_s


B200, GB200, H100 = "NVIDIA B200", "NVIDIA GB200", "NVIDIA H100 80GB HBM3"
# The programme scaled down: one 8-GPU node per about 10,000 GPUs of the national sample
# (examples/registry.toml): new Blackwell GPUs Naver 60k (6 nodes) : the state, Samsung,
# Hyundai, SK Telecom 50k each (5 nodes), on top of each one's existing H100s.
# examples/registry-demo.toml allocates exactly these GPUs (nodes × 8).
FLEET: dict[str, tuple[tuple[str, int], ...]] = {
    "gov": ((B200, 3), (GB200, 2), (H100, 1)),  # 30k, 20k, 10k
    "hyundai": ((B200, 4), (GB200, 1), (H100, 1)),  # 35k, 15k, 8k
    "naver": ((B200, 2), (GB200, 4), (H100, 2)),  # 20k, 40k, 20k
    "samsung": ((B200, 3), (GB200, 2), (H100, 2)),  # 30k, 20k, 15k
    "skt": ((B200, 3), (GB200, 2), (H100, 1)),  # 25k, 25k, 12k
}
GPUS_PER_NODE = 8


def month_bounds_s(period: str) -> tuple[int, int]:
    """UTC epoch seconds of the first and one-past-last instant of a KST month."""
    month = parse_month(period)
    return int(month.start_utc.timestamp()), int(month.end_utc.timestamp())


def plan(registry: Registry, period: str, nodes_per_entity: int | None = None) -> DemoPlan:
    """The demo fleet (:data:`FLEET`) of the entities in ``registry``, at most
    ``nodes_per_entity`` nodes each (None: all), and what goes wrong in its month:

    * the fleet also runs the previous month's last day (where the registry prices it), and that
      month is closed first; the first gov GB200 node (gov-n03) loses its link at 12:00 KST
      that day and its spool drains on the 2nd, after the close: the month's close bills
      those 12 hours as corrections of the previous month;
    * the first gov node splits two GPUs into MIG instances for the whole month;
    * the first naver node's first GPU runs whole until the 11th 00:00 KST, then is
      reconfigured into MIG instances (3 + 2 + 1 + 1 of 7 slices) for the rest of the month;
    * the second samsung node goes silent for two days (unreported capacity);
    * the first GPU of the first hyundai node falls off the bus on day 20 (``gpu_lost``);
    * the second skt node's events of days 9 and 10 arrive on day 13 (late, stored once).
    """
    start_s, end_s = month_bounds_s(period)
    specs = []
    for entity in sorted(registry.entities):
        models = [m for m, count in FLEET.get(entity, ()) for _ in range(count)]
        if not models:  # an entity the demo fleet does not know: one node of each model it holds
            models = sorted({a.gpu_model for a in registry.entities[entity].allocations})
        for i, model in enumerate(models[:nodes_per_entity]):
            silent = (start_s + 12 * DAY_S, start_s + 14 * DAY_S) if (entity, i) == ("samsung", 1) else (None, None)
            mig_gpus, mig_from_s = {("gov", 0): (2, None), ("naver", 0): (1, start_s + 10 * DAY_S)}.get((entity, i), (0, None))
            specs.append(
                NodeSpec(
                    name=f"{entity}-n{i:02d}",
                    entity=entity,
                    gpu_model=model,
                    mig_gpus=mig_gpus,
                    mig_from_s=mig_from_s,
                    silent_from_s=silent[0],
                    silent_to_s=silent[1],
                    lost_gpu_from_s=start_s + 19 * DAY_S if (entity, i) == ("hyundai", 0) else None,
                )
            )
    # the previous month's last day runs only where the registry prices every node's GPUs then
    # (a month before the programme's rate cards begin has nothing to close)
    last_day = parse_month(period).first_day - timedelta(days=1)
    lead_in = all(registry.rate_on(spec.entity, spec.gpu_model, last_day) for spec in specs)
    late = (
        Late("gov-n03", start_s - DAY_S // 2, start_s, start_s + DAY_S),  # previous month: a correction
        Late("skt-n01", start_s + 8 * DAY_S, start_s + 10 * DAY_S, start_s + 12 * DAY_S),
    )
    names = {spec.name for spec in specs}
    return DemoPlan(
        period, start_s, end_s, tuple(specs),
        late=tuple(window for window in late if window.node in names and (lead_in or window.from_s >= start_s)),
        previous=previous_period(period) if lead_in else None,
        lead_in_s=DAY_S if lead_in else 0,
    )


def previous_period(period: str) -> str:
    """The KST month before ``period`` (``2026-10`` → ``2026-09``)."""
    first = datetime.strptime(period, "%Y-%m")
    return (first - timedelta(days=1)).strftime("%Y-%m")


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
    close_previous: Callable[[str], None] | None = None,
) -> tuple[int, RunTotals]:
    """Run the fleet over the lead-in and the month; returns (events published, consumer totals).

    At the month's first instant, once every event of the lead-in that is not held has been
    consumed, ``close_previous(demo.previous)`` closes the previous month (as the schedule
    does on the 1st); held events are published at their window's ``released_s``.

    After the month, a few lines a real bus also carries are sent, so the quarantine holds
    something to read: an event of a project the registry does not know (replayable once it
    is registered), a re-send of a stored event with other values (a conflicting duplicate)
    and a line that is not JSON.
    """
    projects_of: dict[str, list[str]] = {}
    for name, project in registry.projects.items():
        projects_of.setdefault(project.entity, []).append(name)
    nodes = [
        SimulatedNode(spec, sorted(projects_of.get(spec.entity, [])) or ["unattributed"], demo.first_s, demo.end_s)
        for spec in demo.nodes
    ]
    integrators = [
        IntervalIntegrator("demo-dc", node.spec.name, demo.interval_s, demo.sample_period_s, node) for node in nodes
    ]
    totals = RunTotals()
    held: dict[Late, list[UsageEvent]] = {window: [] for window in demo.late}  # spools, until they drain
    published = 0
    sample_event = None

    def publish(node: str, events: list[UsageEvent]) -> int:
        """Send a node's events, keeping back those its spool holds; returns how many were sent."""
        nonlocal sample_event
        spooled: set[str] = set()
        for window in demo.late:
            if window.node == node:
                mine = [e for e in events if window.holds(node, _epoch_s(e.interval_start))]
                held[window].extend(mine)
                spooled.update(e.event_id for e in mine)
        events = [e for e in events if e.event_id not in spooled]
        if events:
            publisher.publish(node, events)
        sample_event = sample_event or next(
            (e for e in events if e.busy_gpu_seconds > 0 and _epoch_s(e.interval_start) >= demo.start_s), None
        )
        return len(events)

    def step(until_s: int) -> None:
        """Close every interval that ended by ``until_s`` and publish it."""
        nonlocal published
        for node, integrator in zip(nodes, integrators, strict=True):
            events = integrator.advance(until_s)
            if events:
                published += publish(node.spec.name, events)

    days = (demo.end_s - demo.first_s) // DAY_S
    for day in range(days):
        day_start = demo.first_s + day * DAY_S
        if day_start == demo.start_s and demo.lead_in_s and close_previous is not None and demo.previous:
            step(day_start)  # the lead-in's last hour
            publisher.flush()
            _merge(totals, drain())
            close_previous(demo.previous)
        for window, events in held.items():
            if events and day_start >= window.released_s:  # the spool drains
                for node, group in _by_node(events):
                    publisher.publish(node, group)
                published += len(events)
                events.clear()
        for ts in range(day_start, day_start + DAY_S, demo.sample_period_s):
            for node, integrator in zip(nodes, integrators, strict=True):
                samples = node.sample(ts, demo.sample_period_s)
                events = integrator.add(samples) if samples else integrator.advance(ts)
                if events:
                    published += publish(node.spec.name, events)
        publisher.flush()
        _merge(totals, drain())
        if on_day is not None:
            on_day(day + 1, days, published)
    step(demo.end_s)
    if sample_event is not None:
        published += _send_refused(publisher, sample_event)
    publisher.flush()
    _merge(totals, drain())
    return published, totals


def _epoch_s(timestamp: str) -> int:
    """UNIX seconds of an event's ``interval_start`` (``YYYY-MM-DDTHH:MM:SSZ``)."""
    return int(datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp())


def _by_node(events: list[UsageEvent]) -> list[tuple[str, list[UsageEvent]]]:
    groups: dict[str, list[UsageEvent]] = {}
    for event in events:
        groups.setdefault(event.node, []).append(event)
    return list(groups.items())


def close_period(store, registry: Registry, period: str):  # noqa: ANN001, ANN201 - server-side types
    """Roll up and close ``period`` under the store's one lease of close and upkeep."""
    from accounting.close import close_month
    from storage.lease import hold
    from storage.rollup import roll_up

    with hold(store, "gpuledger demo close", wait_s=120) as lease:
        roll_up(store, lease=lease)  # usage_hourly: one row per hour × device × owner, from raw
        return close_month(store, registry, period, lease=lease)


def _send_refused(publisher: DirectPublisher, stored: UsageEvent) -> int:
    """Three lines the consumer refuses and keeps in quarantine; returns how many were sent."""
    unregistered = dataclasses.replace(stored, project="kisti-climate", job_id="slurm:4242")
    conflicting = dataclasses.replace(stored, busy_gpu_seconds=stored.busy_gpu_seconds / 2)
    publisher.publish(stored.node, [unregistered, conflicting])
    publisher.publish_raw(stored.node, b'{"schema_version": 1, "event_id": "cut off in transit')
    return 3


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
