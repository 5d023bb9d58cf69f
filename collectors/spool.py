"""The collector's durable local spool, and the publisher that goes through it.

A collector must not lose an interval because the broker is down, restarting, or out of
reach, nor because the collector itself restarts. :class:`SpoolingPublisher` therefore
writes every message to the :class:`Spool` first (append-only, fsynced) and sends it from
there; a message leaves the spool only after the producer's ``flush`` confirmed that the bus
has it. While the bus is unreachable the spool grows, bounded by ``max_bytes``:

* at ``warn_ratio`` (80 %) of the bound a warning is logged, once per crossing;
* when full, :class:`~collectors.errors.SpoolFull` refuses new events: nothing that is
  already spooled is dropped, and nothing is silently discarded;
* when the bus is back the backlog drains in the order it was written.

Delivery is at least once: a crash between the broker's acknowledgement and the spool's
cursor update sends a message again. That is safe because every event carries its
deterministic ``event_id`` and the stream consumer deduplicates.

On-disk layout (``spool_dir``): numbered segment files ``seg-<n>.spool`` holding records
``MAGIC | crc32 | key length | value length | key | value``, and ``cursor.json`` (segment and
byte offset of the first unconfirmed record, replaced atomically). A record cut short by a
crash (a torn tail) fails its length or checksum; it is moved aside into a ``.torn`` file
with a warning, never read as data. Spool files are node-local by nature, so this module
uses the local filesystem directly rather than the dataset store.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import struct
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

from collectors.errors import CollectorError, SpoolFull
from collectors.publish import encode_batch
from streams.bus import Producer
from streams.errors import BusConfigError, BusUnavailable
from streams.schema import UsageEvent

log = logging.getLogger(__name__)

MAGIC = b"GLS1"
_HEADER = struct.Struct(">4sIHI")  # magic, crc32 of the rest, key length, value length
_CURSOR = "cursor.json"


@dataclasses.dataclass(frozen=True, slots=True, order=True)
class Position:
    """A place in the spool: segment number and byte offset in it."""

    segment: int
    offset: int


@dataclasses.dataclass(frozen=True, slots=True)
class SpooledMessage:
    key: str
    value: bytes
    end: Position  # the position just after this record (confirm up to it)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _encode(key: str, value: bytes) -> bytes:
    k = key.encode()
    body = struct.pack(">HI", len(k), len(value)) + k + value
    return MAGIC + struct.pack(">I", zlib.crc32(body)) + body


class Spool:
    """An append-only, fsynced, bounded queue of ``(key, value)`` messages on local disk."""

    def __init__(
        self,
        directory: Path,
        max_bytes: int,
        *,
        segment_bytes: int = 8 * 1024 * 1024,
        warn_ratio: float = 0.8,
    ):
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.warn_ratio = warn_ratio
        self.directory.mkdir(parents=True, exist_ok=True)
        self._warned = False
        self._cursor = self._read_cursor()
        self._drop_consumed_segments()
        segments = self._segments()
        if not segments:
            segments = [self._cursor.segment]
            self._segment_path(self._cursor.segment).touch()
            _fsync_dir(self.directory)
        for n in segments:
            self._repair(n)
        self._messages = sum(1 for _ in self._scan(self._cursor))
        self._tail = segments[-1]
        self._append = open(self._segment_path(self._tail), "ab")  # noqa: SIM115 - held open
        if self._messages:
            log.info(
                "spool %s holds %d unsent messages (%d bytes) from before the restart",
                self.directory, self._messages, self.size_bytes,
            )

    # -- state --------------------------------------------------------------------------

    def _segment_path(self, n: int) -> Path:
        return self.directory / f"seg-{n:012d}.spool"

    def _segments(self) -> list[int]:
        return sorted(int(p.name[4:16]) for p in self.directory.glob("seg-*.spool"))

    def _read_cursor(self) -> Position:
        path = self.directory / _CURSOR
        if not path.exists():
            return Position(1, 0)
        data = json.loads(path.read_text())
        return Position(int(data["segment"]), int(data["offset"]))

    def _write_cursor(self, position: Position) -> None:
        tmp = self.directory / (_CURSOR + ".tmp")
        with open(tmp, "w") as f:
            json.dump({"segment": position.segment, "offset": position.offset}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.directory / _CURSOR)
        _fsync_dir(self.directory)
        self._cursor = position

    def _drop_consumed_segments(self) -> None:
        for n in self._segments():
            if n < self._cursor.segment:
                self._segment_path(n).unlink()

    def _repair(self, n: int) -> None:
        """Cut a segment at its first invalid record; keep the cut bytes aside."""
        path = self._segment_path(n)
        data = path.read_bytes()
        good = 0
        while good < len(data):
            end = self._record_end(data, good)
            if end is None:
                break
            good = end
        if good == len(data):
            return
        aside = path.with_name(f"{path.name}.{good}.torn")
        aside.write_bytes(data[good:])
        with open(path, "r+b") as f:
            f.truncate(good)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(self.directory)
        log.warning(
            "spool segment %s: %d bytes after offset %d are not a whole record (a write cut "
            "short by a crash, never acknowledged); kept aside in %s",
            path.name, len(data) - good, good, aside.name,
        )

    @staticmethod
    def _record_end(data: bytes, at: int) -> int | None:
        if at + _HEADER.size > len(data):
            return None
        magic, crc, klen, vlen = _HEADER.unpack_from(data, at)
        end = at + _HEADER.size + klen + vlen
        if magic != MAGIC or end > len(data) or zlib.crc32(data[at + 8 : end]) != crc:
            return None
        return end

    def _scan(self, start: Position, limit: int | None = None, limit_bytes: int | None = None):
        taken = 0
        size = 0
        for n in self._segments():
            if n < start.segment:
                continue
            data = self._segment_path(n).read_bytes()
            at = start.offset if n == start.segment else 0
            while at < len(data):
                if (limit is not None and taken >= limit) or (
                    limit_bytes is not None and taken and size >= limit_bytes
                ):
                    return
                end = self._record_end(data, at)
                if end is None:  # pragma: no cover - repaired at open
                    raise CollectorError(f"spool segment {n} corrupt at offset {at}")
                _, _, klen, vlen = _HEADER.unpack_from(data, at)
                body = at + _HEADER.size
                key = data[body : body + klen].decode()
                value = data[body + klen : end]
                yield SpooledMessage(key, value, Position(n, end))
                taken += 1
                size += end - at
                at = end

    @property
    def size_bytes(self) -> int:
        """Bytes of unconfirmed records on disk (what counts against ``max_bytes``)."""
        total = 0
        for n in self._segments():
            if n >= self._cursor.segment:
                total += self._segment_path(n).stat().st_size
        return total - self._cursor.offset

    @property
    def messages(self) -> int:
        """Number of unconfirmed messages."""
        return self._messages

    # -- operations ---------------------------------------------------------------------

    def append_all(self, messages: Sequence[tuple[str, bytes]]) -> None:
        """Append messages durably (fsynced before returning), all or none.

        Raises :class:`SpoolFull` when they do not fit under ``max_bytes``.
        """
        records = [_encode(k, v) for k, v in messages]
        need = sum(len(r) for r in records)
        used = self.size_bytes
        if used + need > self.max_bytes:
            raise SpoolFull(
                f"spool {self.directory} is full ({used} of {self.max_bytes} bytes, "
                f"{self._messages} messages waiting): the bus has been unreachable too long; "
                f"{len(records)} new messages refused, nothing dropped"
            )
        if self._append.tell() >= self.segment_bytes:
            self._roll()
        self._append.write(b"".join(records))
        self._append.flush()
        os.fsync(self._append.fileno())
        self._messages += len(records)
        if not self._warned and used + need >= self.warn_ratio * self.max_bytes:
            self._warned = True
            log.warning(
                "spool %s is %.0f%% full (%d of %d bytes, %d messages): the bus is unreachable; "
                "events will be refused when it is full",
                self.directory, 100 * (used + need) / self.max_bytes, used + need,
                self.max_bytes, self._messages,
            )

    def _roll(self) -> None:
        self._append.close()
        self._tail += 1
        self._append = open(self._segment_path(self._tail), "ab")  # noqa: SIM115
        _fsync_dir(self.directory)

    def peek(self, max_messages: int, max_bytes: int = 8 * 1024 * 1024) -> list[SpooledMessage]:
        """The oldest unconfirmed messages, in order (at least one if any)."""
        return list(self._scan(self._cursor, limit=max_messages, limit_bytes=max_bytes))

    def confirm(self, upto: Position, count: int) -> None:
        """Forget the ``count`` oldest messages, which end at ``upto`` (the bus has them)."""
        if upto <= self._cursor:
            return
        self._messages -= count
        if self._messages == 0:
            # Everything delivered: start a fresh segment and delete the old ones.
            self._append.close()
            self._tail += 1
            self._segment_path(self._tail).touch()
            self._write_cursor(Position(self._tail, 0))
            self._append = open(self._segment_path(self._tail), "ab")  # noqa: SIM115
        else:
            self._write_cursor(upto)
        self._drop_consumed_segments()
        if self._warned and self.size_bytes < self.warn_ratio * self.max_bytes:
            self._warned = False

    def close(self) -> None:
        self._append.close()


class SpoolingPublisher:
    """:class:`collectors.publish.Publisher` that never loses events to an unreachable bus.

    ``publish`` spools the node's events (one message per ``max_events_per_message``) and
    then tries to send the backlog; a failed attempt (:class:`BusUnavailable`, including a
    flush that times out) leaves everything spooled and waits ``retry_interval_s`` (on the
    given ``clock``), doubling after each further failure up to ``max_retry_interval_s``,
    before the next try: an attempt against a dead broker blocks for the bus's connect
    timeout, and that must not happen on every interval of a long outage.
    ``flush`` always tries, and returns once everything is on the bus *or safely spooled*.
    :class:`~streams.errors.BusConfigError` (wrong settings, refused credentials) propagates:
    retrying cannot fix it, and the data stays spooled for when it is fixed.

    With ``background=True`` (the collector daemon) ``publish`` only spools and wakes a sender
    thread, which drains on the same schedule: sampling never waits on the network, however
    long an attempt against a dead broker blocks. A :class:`BusConfigError` on that thread is
    logged once per attempt and the data stays spooled. Spool operations are serialised by a
    lock; sending happens outside it.
    """

    def __init__(
        self,
        producer: Producer,
        spool_dir: Path,
        max_bytes: int,
        *,
        max_events_per_message: int = 5000,
        flush_timeout_s: float = 10.0,
        retry_interval_s: float = 5.0,
        max_retry_interval_s: float = 60.0,
        drain_batch_messages: int = 500,
        clock: Callable[[], float] = time.monotonic,
        segment_bytes: int = 8 * 1024 * 1024,
        background: bool = False,
    ):
        self._producer = producer
        self._spool_lock = threading.Lock()  # spool state: appends, peeks, confirms
        self._drain_lock = threading.Lock()  # one drain at a time (sender thread or flush)
        self.spool = Spool(spool_dir, max_bytes, segment_bytes=segment_bytes)
        self._max_events = max_events_per_message
        self._flush_timeout_s = flush_timeout_s
        self._retry_interval_s = retry_interval_s
        self._max_retry_interval_s = max_retry_interval_s
        self._failures = 0
        self._drain_batch = drain_batch_messages
        self._clock = clock
        self._next_attempt = clock()
        self._outage_since: float | None = None
        self.delivered_messages = 0
        self._wake = threading.Event()
        self._closing = False
        self._sender: threading.Thread | None = None
        if background:
            self._sender = threading.Thread(target=self._send_loop, name="spool-sender", daemon=True)
            self._sender.start()

    @property
    def backlog_messages(self) -> int:
        with self._spool_lock:
            return self.spool.messages

    @property
    def backlog_bytes(self) -> int:
        with self._spool_lock:
            return self.spool.size_bytes

    def publish(self, node: str, events: Sequence[UsageEvent]) -> None:
        if not events:
            return
        messages = [
            (node, encode_batch(events[i : i + self._max_events]))
            for i in range(0, len(events), self._max_events)
        ]
        with self._spool_lock:
            self.spool.append_all(messages)
        if self._sender is not None:
            self._wake.set()
        elif self._clock() >= self._next_attempt:
            self.drain()

    def _send_loop(self) -> None:
        """The sender thread: drain when woken and due, or when a retry falls due."""
        while not self._closing:
            # idle: sleep until a publish wakes us; in an outage: until the next attempt is due
            due_in = self._next_attempt - self._clock() if self._failures else None
            self._wake.wait(timeout=None if due_in is None else max(0.05, due_in))
            self._wake.clear()
            if self._closing or self._clock() < self._next_attempt:
                continue
            with self._spool_lock:
                waiting = self.spool.messages
            if not waiting:
                continue
            try:
                self.drain()
            except BusConfigError as exc:
                log.error("cannot send the spool (%s): events stay spooled until the settings are fixed", exc)
                self._failures += 1
                self._next_attempt = self._clock() + self._max_retry_interval_s
            except Exception:  # noqa: BLE001 - the thread must not die; the data stays spooled
                log.exception("spool sender failed; trying again later")
                self._failures += 1
                self._next_attempt = self._clock() + self._max_retry_interval_s

    def drain(self) -> bool:
        """Send the backlog in order; ``True`` when the spool is empty afterwards."""
        with self._drain_lock:
            return self._drain()

    def _drain(self) -> bool:
        sent = 0
        while True:
            with self._spool_lock:
                batch = self.spool.peek(self._drain_batch)
            if not batch:
                break
            try:
                for message in batch:
                    self._producer.send(message.key, message.value)
                self._producer.flush(self._flush_timeout_s)
            except BusUnavailable as exc:
                self._failures += 1
                backoff = self._retry_interval_s * 2 ** min(self._failures - 1, 16)
                self._next_attempt = self._clock() + min(backoff, self._max_retry_interval_s)
                if self._outage_since is None:
                    self._outage_since = self._clock()
                    with self._spool_lock:
                        waiting, size = self.spool.messages, self.spool.size_bytes
                    log.warning(
                        "bus unreachable (%s); spooling in %s (%d messages, %d bytes waiting)",
                        exc, self.spool.directory, waiting, size,
                    )
                return False
            with self._spool_lock:
                self.spool.confirm(batch[-1].end, len(batch))
            sent += len(batch)
        self.delivered_messages += sent
        self._failures = 0
        if self._outage_since is not None:
            log.warning("bus reachable again: sent %d spooled messages", sent)
            self._outage_since = None
        self._next_attempt = self._clock()
        return True

    def flush(self) -> None:
        self.drain()

    def close(self) -> None:
        if self._sender is not None:
            self._closing = True
            self._wake.set()
            self._sender.join(timeout=self._flush_timeout_s + 30)
        try:
            self.drain()
            try:
                self._producer.close()
            except BusUnavailable as exc:
                log.warning("closing the producer: %s (unsent messages stay spooled)", exc)
        finally:
            self.spool.close()
