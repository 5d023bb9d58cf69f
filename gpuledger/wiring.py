"""Building the real parts from settings: the only place that knows which implementation is used.

Nothing here holds business logic; each function turns settings into one object of a room.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import datetime

from prometheus_client import CollectorRegistry

from accounting.registry import Registry, load_registry
from gpuledger.health import HeartbeatFile
from gpuledger.settings import Settings
from storage.dataset import Store
from storage.owner import claim
from streams.bus import Bus
from streams.consumer import StreamConsumer
from streams.metrics import ConsumerMetrics
from streams.dedupe import EventWindow
from streams.pipeline import BatchProcessor
from streams.validate import Accounts


def make_store(settings: Settings) -> Store:
    """The data directory: a local one, or ``s3://bucket/prefix`` with ``[storage]`` settings
    (or the ``AWS_*`` variables) for the endpoint and credentials."""
    return Store(settings.data_dir, s3_options=settings.storage.s3_options())


def make_bus(settings: Settings) -> Bus:
    """The bus named by ``settings.bus``: the embedded local log, or Kafka."""
    if settings.bus == "kafka":
        from streams.kafka import KafkaBus  # kafka-python is imported only when asked for

        return KafkaBus(settings.kafka)
    from streams.localbus import LocalBus

    return LocalBus(settings.local_data_dir("the embedded local bus") / "bus")


def registry_from(settings: Settings) -> Registry:
    return load_registry(settings.registry_file())


def accounts_of(registry: Registry, clock: Callable[[], datetime] | None = None) -> Accounts:
    """What the stream consumer needs of the registry: who exists, who owns which project,
    which GPU models a rate card prices; and the clock that bounds timestamps (the real one
    unless given)."""
    accounts = Accounts(
        entities=frozenset(registry.entities),
        project_entity={name: p.entity for name, p in registry.projects.items()},
        gpu_models=frozenset(card.gpu_model for card in registry.rates),
    )
    return accounts if clock is None else dataclasses.replace(accounts, clock=clock)


def make_stream_consumer(
    settings: Settings,
    registry: Registry,
    bus: Bus,
    store: Store,
    *,
    metrics_registry: CollectorRegistry | None = None,
) -> StreamConsumer:
    """A consumer of the usage topic in the configured group, writing into ``store``.

    Nothing to recover on start: a batch is visible only once its Delta commit exists, and
    the offsets in that commit say where to resume.

    With ``metrics_registry`` the consumer reports to a :class:`ConsumerMetrics` on it (the
    caller serves it, or not) and writes its heartbeat (``settings.heartbeat_file``, read by
    ``gpuledger health``), a first one before it polls.
    """
    topic = settings.kafka.usage_topic
    claim(store, settings.kafka.consumer_group, topic)  # one store, one owner (storage/owner.py)
    quarantine = bus.producer(settings.kafka.quarantine_topic)
    bus_consumer = bus.consumer(topic, settings.kafka.consumer_group, max_batch_bytes=settings.consumer.max_batch_bytes)
    metrics = None
    if metrics_registry is not None:
        heartbeat = HeartbeatFile(settings.heartbeat_file, s3_options=settings.storage.s3_options())
        metrics = ConsumerMetrics(metrics_registry, lag=bus_consumer, on_progress=heartbeat.write)  # type: ignore[arg-type]
        metrics.report()
    return StreamConsumer(
        bus_consumer,
        BatchProcessor(store, accounts_of(registry), EventWindow(
            store, settings.consumer.dedupe_window_hours, settings.consumer.dedupe_filter_after_minutes,
            settings.consumer.dedupe_filter_bits_per_id,
        )),
        quarantine_producer=quarantine,
        max_batch_records=settings.consumer.max_batch_records,
        max_batch_bytes=settings.consumer.max_batch_bytes,
        poll_timeout_s=settings.consumer.poll_timeout_s,
        group=settings.kafka.consumer_group,
        observer=metrics,
    )
