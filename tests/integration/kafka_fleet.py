"""Helpers of the Kafka integration tests: a known fleet, its truth, and the stored totals.

The truth is computed from the events as produced (independently of the consumer); the stored
totals are read back from ``usage_hourly/`` and ``raw/`` with pyarrow, not through the code
under test.
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from deltalake import DeltaTable

from accounting.registry import Registry, load_registry
from collectors.integrate import IntervalIntegrator
from collectors.simulated import NodeSpec, SimulatedNode
from gpuledger.demo import month_bounds_s
from gpuledger.settings import KafkaSettings
from gpuledger.wiring import accounts_of
from storage.dataset import Store
from streams.consumer import StreamConsumer
from streams.kafka import KafkaBus, KafkaConsumer, KafkaProducer
from streams.pipeline import BatchProcessor, BatchResult
from streams.schema import UNATTRIBUTED, UsageEvent, to_microseconds

REPO = Path(__file__).resolve().parents[2]
REGISTRY = REPO / "examples" / "registry.toml"
PERIOD = "2026-10"


class Broker(Protocol):
    """The session broker of conftest.py, as the fault tests use it."""

    def stop(self) -> None: ...

    def start(self) -> None: ...


def registry() -> Registry:
    return load_registry(REGISTRY)


@dataclasses.dataclass(frozen=True, slots=True)
class Fleet:
    """Every node's events, interval by interval, in the order a collector publishes them."""

    batches: tuple[tuple[str, tuple[UsageEvent, ...]], ...]  # (node, one interval's events)

    @property
    def events(self) -> list[UsageEvent]:
        return [e for _, events in self.batches for e in events]


def known_fleet(nodes_per_entity: int = 1, hours: int = 3, interval_s: int = 300) -> Fleet:
    """A deterministic fleet: 8-GPU nodes of every entity (one with MIG), ``hours`` long."""
    reg = registry()
    start_s, _ = month_bounds_s(PERIOD)
    end_s = start_s + hours * 3600
    projects: dict[str, list[str]] = {}
    for name, project in reg.projects.items():
        projects.setdefault(project.entity, []).append(name)
    specs = []
    for entity in sorted(reg.entities):
        models = sorted({a.gpu_model for a in reg.entities[entity].allocations})
        for i in range(nodes_per_entity):
            specs.append(
                NodeSpec(f"{entity}-n{i:02d}", entity, models[i % len(models)],
                         mig_gpus=2 if (entity, i) == ("gov", 0) else 0)
            )
    sample_period_s = 60
    nodes = [SimulatedNode(s, sorted(projects[s.entity]), start_s, end_s) for s in specs]
    integrators = [IntervalIntegrator("it-dc", n.spec.name, interval_s, sample_period_s, n) for n in nodes]
    batches: list[tuple[str, tuple[UsageEvent, ...]]] = []
    for ts in range(start_s, end_s, sample_period_s):
        for node, integ in zip(nodes, integrators, strict=True):
            samples = node.sample(ts, sample_period_s)
            events = integ.add(samples) if samples else integ.advance(ts)
            if events:
                batches.append((node.spec.name, tuple(events)))
    for node, integ in zip(nodes, integrators, strict=True):
        events = integ.advance(end_s)
        if events:
            batches.append((node.spec.name, tuple(events)))
    return Fleet(tuple(batches))


def truth(events: list[UsageEvent]) -> dict[tuple[str, str], int]:
    """GPU-microseconds per (entity, project) of the distinct events."""
    out: Counter[tuple[str, str]] = Counter()
    for e in {e.event_id: e for e in events}.values():
        out[(e.entity, e.project)] += to_microseconds(e.gpu_seconds)
    return dict(out)


def billable(t: dict[tuple[str, str], int]) -> dict[tuple[str, str], int]:
    return {k: v for k, v in t.items() if k[1] != UNATTRIBUTED and v}


def _table(data_dir: Path | str, name: str, columns: list[str]):
    """A table's current rows read by delta-rs (an independent reader of the Delta log); an
    ``s3://`` data directory is read with the ``AWS_*`` variables of the environment."""
    text = str(data_dir)
    if text.startswith("s3:"):
        uri = "s3://" + text.split(":", 1)[1].lstrip("/") + "/" + name
        keys = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_ALLOW_HTTP")
        options = {k: os.environ[k] for k in keys if k in os.environ}
        if not DeltaTable.is_deltatable(uri, storage_options=options):
            return None
        return DeltaTable(uri, storage_options=options).to_pyarrow_table(columns=columns)
    if not (Path(data_dir) / name / "_delta_log").exists():
        return None
    return DeltaTable(str(Path(data_dir) / name)).to_pyarrow_table(columns=columns)


def stored(data_dir: Path) -> dict[tuple[str, str], int]:
    """GPU-microseconds per (entity, project) stored in ``raw``, read by delta-rs."""
    table = _table(data_dir, "raw", ["entity", "project", "gpu_microseconds"])
    if table is None:
        return {}
    out: Counter[tuple[str, str]] = Counter()
    for entity, project, us in zip(
        table["entity"].to_pylist(), table["project"].to_pylist(), table["gpu_microseconds"].to_pylist(),
        strict=True,
    ):
        out[(entity, project)] += us
    return dict(out)


def raw_event_ids(data_dir: Path) -> list[str]:
    table = _table(data_dir, "raw", ["event_id"])
    return [] if table is None else table["event_id"].to_pylist()


def quarantine_rows(data_dir: Path) -> list[dict]:
    table = _table(data_dir, "quarantine", ["reason_code", "reason", "source", "raw"])
    return [] if table is None else table.to_pylist()


def publish(bus, topic: str, batches) -> None:
    """Every batch onto ``topic``, each node's under its key, as collectors send them."""
    from collectors.publish import DirectPublisher

    publisher = DirectPublisher(bus.producer(topic))
    for node, events in batches:
        publisher.publish(node, list(events))
    publisher.close()


def kafka_bus(bootstrap: str, partitions: int = 4) -> KafkaBus:
    return KafkaBus(KafkaSettings(bootstrap=bootstrap, partitions=partitions), connect_timeout_s=5.0)


class Parts:
    """What a test must close after a stream consumer: its bus consumer and producer."""

    def __init__(self, kafka_consumer: KafkaConsumer, quarantine: KafkaProducer | None):
        self.kafka_consumer = kafka_consumer
        self.quarantine = quarantine

    def close(self) -> None:
        self.kafka_consumer.close()
        if self.quarantine is not None:
            self.quarantine.close()


def stream_consumer(
    bus: KafkaBus, data_dir: Path | str, topic: str, group: str, *, quarantine_topic: str | None = None,
    max_batch_records: int = 50_000,
    before_commit: Callable[[BatchResult], None] | None = None,
) -> tuple[StreamConsumer, Parts]:
    """The consumer as ``gpuledger consume`` builds it, on a given topic and group, and the
    parts to close (the stream consumer does not own them)."""
    store = Store(data_dir)
    consumer = bus.consumer(topic, group)
    quarantine = bus.producer(quarantine_topic) if quarantine_topic else None
    return StreamConsumer(
        consumer,
        BatchProcessor(store, accounts_of(registry())),
        quarantine_producer=quarantine,
        max_batch_records=max_batch_records,
        poll_timeout_s=0.5,
        before_commit=before_commit,
        group=group,
    ), Parts(consumer, quarantine)
