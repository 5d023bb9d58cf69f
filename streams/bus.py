"""The bus interface: what the collector publishes to and the consumer reads from.

Two implementations sit beside this module: :mod:`streams.localbus` (a durable on-disk log
for one machine, no server) and :mod:`streams.kafka` (Apache Kafka through kafka-python).
Tests use the local bus in a temporary directory as the in-memory twin.

Contract every implementation keeps:

* a message is opaque bytes; on ``gpu.usage.v1`` it holds one or more usage events as JSON
  Lines (a node's batch for an interval), on ``gpu.usage.quarantine.v1`` one
  refused line as a JSON object (``source``, ``reason_code``, ``reason``, ``raw``: made by
  :func:`streams.consumer.quarantine_envelope`);
* ``key`` is the node name, so one node's messages stay in order in one partition;
* a consumer's position moves only through :meth:`Consumer.commit`, which the consumer loop
  calls after the batch is durably written; a consumer that restarts resumes at the last
  commit and sees the uncommitted records again (at-least-once; the offsets stored with the
  rows, ``streams.pipeline``, make it exactly-once);
* the loop writes and commits each batch before it polls again, and ``on_revoke`` is told
  which partitions left; a member whose batch outlasts ``max_poll_interval_ms`` can still lose
  its partitions mid-batch (its commit is then refused, and storage's offsets keep the next
  owner from storing the batch twice).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

USAGE_TOPIC = "gpu.usage.v1"
QUARANTINE_TOPIC = "gpu.usage.quarantine.v1"


@dataclasses.dataclass(frozen=True, slots=True)
class BusRecord:
    """One message as the consumer sees it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes


class Producer(Protocol):
    """Publishes messages to one topic."""

    def send(self, key: str, value: bytes) -> None:
        """Queue one message; may block while buffers are full. Raises ``BusUnavailable``."""

    def flush(self, timeout_s: float | None = None) -> None:
        """Block until every queued message is durably on the bus, or raise ``BusUnavailable``."""

    def close(self) -> None:
        """Flush and release connections."""


class Consumer(Protocol):
    """Reads one topic in a consumer group; position moves only on commit."""

    def poll_batch(self, max_records: int, timeout_s: float) -> list[BusRecord]:
        """Up to ``max_records`` records after the current position; ``[]`` when idle."""

    def commit(self, next_offsets: Mapping[int, int]) -> bool | None:
        """Record, per partition, the offset of the next record to read. ``False``: the bus
        refused it because the group rebalanced (the records come again); raises
        ``BusUnavailable`` when the bus did not answer."""

    def caught_up(self) -> bool:
        """``True`` when nothing is left after the current position, as far as the bus knows
        now (an empty poll alone does not say so: a large fetch can outlast a poll's timeout)."""

    def close(self) -> None:
        """Leave the group and release connections (no implicit commit)."""


RevokeCallback = Callable[[Sequence[int]], None]


class Bus(Protocol):
    """Makes producers and consumers for the topics of one bus."""

    def producer(self, topic: str) -> Producer:
        """A producer for ``topic`` (created if missing where the bus can)."""

    def consumer(
        self, topic: str, group: str, on_revoke: RevokeCallback | None = None
    ) -> Consumer:
        """A consumer of ``topic`` in consumer group ``group``."""
