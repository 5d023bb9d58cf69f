"""Publishing events: one message per node per interval, key = node.

:class:`Publisher` is what the collector agent, ``ingest`` and ``demo`` hand events to.
:class:`DirectPublisher` sends straight to a bus producer (used where a failure should stop
the command). The spooling publisher of ``collectors/spool.py`` keeps events on local disk
while the bus is unreachable.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from streams.bus import Producer
from streams.schema import UsageEvent


def encode_batch(events: Sequence[UsageEvent]) -> bytes:
    """Events as one message value: JSON Lines, UTF-8, one event per line."""
    return ("\n".join(e.to_json() for e in events)).encode()


class Publisher(Protocol):
    def publish(self, node: str, events: Sequence[UsageEvent]) -> None:
        """Publish one node's events (typically one interval) as one message."""

    def flush(self) -> None:
        """Block until everything published is on the bus (or safely spooled)."""

    def close(self) -> None:
        """Flush and release the bus."""


class DirectPublisher:
    """Sends each batch as one message; errors propagate to the caller."""

    def __init__(self, producer: Producer, max_events_per_message: int = 5000):
        self._producer = producer
        self._max = max_events_per_message

    def publish(self, node: str, events: Sequence[UsageEvent]) -> None:
        for start in range(0, len(events), self._max):
            self._producer.send(node, encode_batch(events[start : start + self._max]))

    def publish_raw(self, node: str, payload: bytes) -> None:
        """One message of bytes as they are (the demo's line that is not JSON)."""
        self._producer.send(node, payload)

    def flush(self) -> None:
        self._producer.flush()

    def close(self) -> None:
        self._producer.close()
