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
* what storage committed is the truth, the bus's own position a hint: a consumer given a
  :class:`RebalanceListener` (:meth:`Consumer.listen`) asks it, at start and on every
  assignment, where each partition resumes (storage's stored offset + 1), seeks there,
  commits that offset to the bus's group (so the bus's lag tools tell the truth), and names a
  group position it overrode. A stored offset beyond the partition's log end (a topic
  re-created, offsets restarted) is :class:`~streams.errors.StoredOffsetBeyondLog`: never a
  silent skip. Kafka stops that partition only (kept paused, named, the member consumes its
  other partitions; :meth:`Consumer.stopped_partitions`); the local bus, one partition, raises;
* otherwise a consumer's position moves only through :meth:`Consumer.commit`, which the
  consumer loop calls after the batch is durably written;
* the loop writes and commits each batch before it polls again. Records of a partition
  revoked while a batch is being polled are not handed out. A member that stops answering
  mid-batch (a GC pause, a frozen VM, a write past the session timeout) can still lose its
  partitions unseen: its Delta commit is then refused (``streams.checkpoint``), and its bus
  commit too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

USAGE_TOPIC = "gpu.usage.v1"
QUARANTINE_TOPIC = "gpu.usage.quarantine.v1"


# values per batch before a poll stops (`[consumer] max_batch_bytes`): the decoded columns and
# the rules' frames of a batch are a multiple of this, so it, not the message count, sets the
# consumer's peak memory (docs/BENCHMARKS.md, "Cost per event against peers", item 3)
DEFAULT_MAX_BATCH_BYTES = 8 * 1024 * 1024


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


class RebalanceListener(Protocol):
    """What a consumer tells about its partitions (the stream consumer implements it)."""

    def on_assign(self, partitions: Sequence[int]) -> Mapping[int, int]:
        """``partitions`` were just assigned (at start, or by a rebalance). Returns, per
        partition, the next offset to read as storage says (its stored offset + 1); a
        partition left out has nothing stored and starts at the beginning of its log."""

    def on_revoke(self, partitions: Sequence[int]) -> None:
        """``partitions`` left this member; nothing of them is handed out after this."""


class Consumer(Protocol):
    """Reads one topic in a consumer group; position moves only on commit."""

    topic: str

    def listen(self, listener: RebalanceListener) -> None:
        """Follow assignments with ``listener``: at once for what is assigned now (the local
        bus: partition 0), then on every rebalance. Each partition is sought to the offset
        ``on_assign`` returns and that offset is committed to the group."""

    def poll_batch(
        self, max_records: int, timeout_s: float, max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES
    ) -> list[BusRecord]:
        """Up to ``max_records`` records after the current position; ``[]`` when idle. A batch
        stops growing once its values reach ``max_batch_bytes`` (its first record is always
        taken, so one message larger than the bound still moves), which bounds the consumer's
        memory by bytes, not by messages of any size."""

    def commit(self, next_offsets: Mapping[int, int]) -> bool | None:
        """Record, per partition, the offset of the next record to read. ``False``: the bus
        refused it because the group rebalanced (the records come again); raises
        ``BusUnavailable`` when the bus did not answer."""

    def caught_up(self) -> bool:
        """``True`` when nothing is left after the current position, as far as the bus knows
        now (an empty poll alone does not say so: a large fetch can outlast a poll's timeout)."""

    def stopped_partitions(self) -> Mapping[int, Exception]:
        """Assigned partitions kept stopped (storage's offset beyond or before the log), each
        with the error that names it. The local bus (one partition) raises instead: ``{}``."""

    def close(self) -> None:
        """Leave the group and release connections (no implicit commit)."""


RevokeCallback = Callable[[Sequence[int]], None]


def offset_beyond_log(topic: str, partition: int, stored: int, log_end: int, bus: str) -> str:
    """The one line that stops a partition whose stored offset the log does not reach."""
    return (
        f"partition {partition} of {topic}: storage holds it up to offset {stored}, but the {bus} bus's log "
        f"ends at offset {log_end} (the topic was re-created or its offsets restarted); nothing of it is read. "
        f"If so, re-base it deliberately (recorded in raw's history): gpuledger offsets rebase "
        f"--topic {topic} --partition {partition} --to <first offset to read, e.g. 0> --reason '<why>'"
    )


class Bus(Protocol):
    """Makes producers and consumers for the topics of one bus."""

    def producer(self, topic: str) -> Producer:
        """A producer for ``topic`` (created if missing where the bus can)."""

    def consumer(
        self,
        topic: str,
        group: str,
        on_revoke: RevokeCallback | None = None,
        max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
    ) -> Consumer:
        """A consumer of ``topic`` in consumer group ``group``. ``max_batch_bytes`` also bounds
        what the bus fetches ahead of the polls (Kafka's fetch; the local bus reads per poll)."""
