"""The Kafka producer: ``acks='all'``, idempotent, zstd, key = the node (one node's messages
stay in order in one partition; many events travel in one message).

It connects lazily, on its first send: a collector that starts while the broker is down still
starts, and spools (``collectors/spool.py``) until the broker is back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import kafka.errors as kerr
from kafka import KafkaProducer as _KProducer

from streams.errors import BusUnavailable
from streams.kafka.connection import MAX_MESSAGE_BYTES, client_config, translate

if TYPE_CHECKING:
    from streams.kafka.bus import KafkaBus

_BATCH_BYTES = 1024 * 1024

_PRUNE_AT = 10_000  # pending messages before delivered ones are forgotten


class KafkaProducer:
    """:class:`streams.bus.Producer` on Kafka: ``acks='all'``, idempotent, zstd, key = node.

    :meth:`flush` checks the outcome of every message sent since the last flush: it returns
    only when each one is acknowledged by the broker, otherwise it raises, and the caller
    (the spool) keeps the messages and sends them again. Duplicates that this can create are
    harmless: every event carries its ``event_id`` and the consumer dedupes.
    """

    def __init__(self, bus: KafkaBus, topic: str):
        self._bus = bus
        self._sasl = bus._sasl
        self.topic = topic
        self._producer: _KProducer | None = None
        self._pending: list[Any] = []
        self._prune_at = _PRUNE_AT

    def __repr__(self) -> str:
        return f"KafkaProducer(topic={self.topic!r}, bus={self._bus!r})"

    def _client(self) -> _KProducer:
        if self._producer is None:
            bus, s = self._bus, self._bus.settings
            bus.ensure_topics([self.topic])
            try:
                self._producer = _KProducer(
                    client_id=f"{bus.client_id}-producer",
                    acks="all",
                    enable_idempotence=True,
                    compression_type="zstd",
                    linger_ms=s.linger_ms,
                    batch_size=_BATCH_BYTES,
                    max_request_size=MAX_MESSAGE_BYTES,
                    max_block_ms=int(bus.connect_timeout_s * 1000),
                    bootstrap_timeout_ms=int(bus.connect_timeout_s * 1000),
                    delivery_timeout_ms=int(bus.delivery_timeout_s * 1000),
                    request_timeout_ms=int(min(30.0, bus.delivery_timeout_s / 2) * 1000),
                    **client_config(s),
                )
            except kerr.KafkaError as exc:
                raise translate(exc, f"connecting a producer for {self.topic}", sasl=self._sasl) from exc
            except (ValueError, TypeError, AssertionError) as exc:
                raise translate(exc, f"configuring a producer for {self.topic}", sasl=self._sasl) from exc
        return self._producer

    def send(self, key: str, value: bytes) -> None:
        producer = self._client()
        try:
            self._pending.append(producer.send(self.topic, value=value, key=key.encode()))
        except kerr.KafkaError as exc:
            raise translate(exc, f"sending to {self.topic}", sasl=self._sasl) from exc
        if len(self._pending) >= self._prune_at:
            self._prune()

    def _prune(self) -> None:
        """A long ingest: forget what was delivered, and stop at the first message that failed.

        Without the stop, a producer whose broker died goes on sending for as long as expired
        messages free buffer space, and reports nothing until the final flush. The threshold
        doubles with what stays open, so a slow broker costs amortised O(1) per send."""
        self._pending = [f for f in self._pending if not (f.is_done and f.succeeded())]
        failed = [f for f in self._pending if f.is_done and f.failed()]
        if failed:
            count = len(self._pending)
            self._pending = []
            raise translate(
                failed[0].exception, f"delivering {len(failed)} of {count} pending messages to {self.topic}", sasl=self._sasl
            ) from failed[0].exception
        self._prune_at = max(_PRUNE_AT, 2 * len(self._pending))

    def flush(self, timeout_s: float | None = None) -> None:
        if self._producer is None or not self._pending:
            # Nothing sent since the last flush. Messages of a flush that failed may still sit
            # in kafka-python's buffer; their sender was told, and holds them (the spool).
            return
        pending, self._pending = self._pending, []
        if timeout_s is None:
            # Never wait without end: a broker that dies mid-send must end an ingest with an
            # error once every message's delivery timeout has passed.
            timeout_s = self._bus.delivery_timeout_s + self._bus.connect_timeout_s
        try:
            self._producer.flush(timeout=timeout_s)
        except kerr.KafkaError as exc:
            raise translate(exc, f"flushing {len(pending)} messages to {self.topic}", sasl=self._sasl) from exc
        failures = [f.exception for f in pending if f.failed()]
        if failures:
            first = failures[0]
            err = translate(first, f"delivering {len(failures)} of {len(pending)} messages to {self.topic}", sasl=self._sasl)
            raise err from first
        unfinished = sum(1 for f in pending if not f.is_done)
        if unfinished:  # flush returned early: treat as not delivered
            raise BusUnavailable(f"{unfinished} messages to {self.topic} not acknowledged in time")

    def close(self) -> None:
        """Flush and close; messages that cannot be delivered are dropped (the flush said so)."""
        if self._producer is not None:
            try:
                self.flush()
            finally:
                producer, self._producer = self._producer, None
                _close_producer(producer, self._bus.connect_timeout_s)


def _close_producer(producer: _KProducer, timeout_s: float) -> None:
    """Close a kafka-python producer even when its broker is gone.

    kafka-python's ``close`` flushes first and raises ``KafkaTimeoutError`` while messages are
    undelivered, leaving the producer open: its ``__del__`` then retries at interpreter exit and
    prints a traceback after our one-line error. Force it closed instead.
    """
    try:
        producer.close(timeout=timeout_s)
    except kerr.KafkaTimeoutError:
        sender = getattr(producer, "_sender", None)
        if sender is not None:
            sender.force_close()
        producer._closed = True  # noqa: SLF001 - see the docstring
