"""The stream consumer loop: poll → process (write) → commit, and nothing else.

Order per batch, which is what makes a crash harmless:

1. poll up to ``max_batch_records`` messages;
2. :class:`~streams.pipeline.BatchProcessor` commits the batch's quarantine and raw rows to
   their tables, each commit recording the batch's offsets per partition (the commit point);
3. refused lines are published to the quarantine topic when one is given (flushed);
4. offsets are committed to the bus — advisory: a crash before this replays the batch, and
   the offsets stored with the rows make the replay a no-op.

The consumer is the bus consumer's :class:`~streams.bus.RebalanceListener`: at start and on
every assignment it answers, from storage (a fresh checkpoint of ``raw``), where each partition
resumes, and forgets the ids it holds in memory (the partitions' history was written by another
member). The bus seeks there and commits it to the group: storage's offsets win over the bus's.
A partition whose stored offset its log does not reach is stopped by the Kafka member alone
(:meth:`~streams.bus.Consumer.stopped_partitions`, in the metrics and the heartbeat); the loop
consumes the others, and an ``until_idle`` run ends with that partition's one line.

The loop never polls again while it holds unwritten records, and records of a partition
revoked while a batch is polled are not handed out. The group can still move a partition away
mid-batch unseen, when the process stops answering for the session timeout or the step
outlasts ``max_poll_interval_ms``: the batch's Delta commit is then checked against the version
its checkpoint pinned and refused if the new owner committed the partition meanwhile
(:mod:`streams.checkpoint`), and the bus refuses its offset commit too.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence

from streams.bus import DEFAULT_MAX_BATCH_BYTES, BusRecord, Consumer, Producer
from streams.errors import BusUnavailable
from streams.metrics import COMMIT_REFUSED, COMMIT_UNAVAILABLE, ConsumerObserver
from streams.pipeline import BatchProcessor, BatchResult, Position

log = logging.getLogger(__name__)


@dataclasses.dataclass(slots=True)
class RunTotals:
    """Counts over a whole run of the consumer."""

    batches: int = 0
    messages: int = 0
    accepted: int = 0
    refused: int = 0
    duplicates: int = 0
    replayed: int = 0  # messages skipped: storage already held them (offsets in its commits)

    def add(self, result: BatchResult) -> None:
        self.replayed += result.replayed
        self.batches += 1
        self.messages += result.messages
        self.accepted += result.accepted
        self.refused += result.refused
        self.duplicates += result.duplicates


def record_source(record: BusRecord) -> str:
    """Where a message came from, as stored in quarantine: ``topic/partition@offset``."""
    return f"{record.topic}/{record.partition}@{record.offset}"


def quarantine_envelope(source: str, raw: str, reason_code: str, reason: str) -> bytes:
    """A quarantine-topic message: the original line plus why it was refused."""
    return json.dumps(
        {"source": source, "reason_code": reason_code, "reason": reason, "raw": raw},
        ensure_ascii=False,
    ).encode()


class StreamConsumer:
    """Drives a bus consumer through a batch processor with write-then-commit."""

    def __init__(
        self,
        consumer: Consumer,
        processor: BatchProcessor,
        *,
        quarantine_producer: Producer | None = None,
        max_batch_records: int = 50_000,
        max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
        poll_timeout_s: float = 0.5,
        before_commit: Callable[[BatchResult], None] | None = None,
        retry_s: float = 1.0,
        retry_max_s: float = 30.0,
        group: str = "gpuledger",
        observer: ConsumerObserver | None = None,
    ):
        self._group = group
        self._observer = observer  # metrics and heartbeat (streams.metrics); never raises
        self._retry_s = retry_s
        self._retry_max_s = retry_max_s
        self._consumer = consumer
        self._processor = processor
        self._quarantine = quarantine_producer
        self._max = max_batch_records
        self._max_bytes = max_batch_bytes
        self._timeout = poll_timeout_s
        self._before_commit = before_commit  # test hook: a crash between write and commit
        self._topic = consumer.topic
        consumer.listen(self)  # last: the local bus assigns its partition at once

    # -- streams.bus.RebalanceListener ----------------------------------------------------
    def on_assign(self, partitions: Sequence[int]) -> dict[int, int]:
        """Partitions assigned: forget remembered ids (their history was written by another
        member) and return, per partition, the next offset storage does not hold (read from a
        fresh checkpoint: what storage committed is the truth)."""
        self._processor.window.clear()
        streams = {f"{self._group}/{self._topic}/{p}": p for p in partitions}
        stored = self._processor.stored_offsets(list(streams))
        return {streams[s]: offset + 1 for s, offset in stored.items()}

    def on_revoke(self, partitions: Sequence[int]) -> None:
        """Partitions left: nothing to hand back (no batch is held between polls; the bus
        drops records of a partition revoked while a batch was polled)."""
        log.info("partitions revoked: %s", list(partitions))

    def close(self) -> None:
        """Leave the group and flush the quarantine producer (a Kafka group member left behind
        makes the next consumer wait a session timeout to rejoin)."""
        try:
            self._consumer.close()
        finally:
            if self._quarantine is not None:
                self._quarantine.close()

    def __enter__(self) -> StreamConsumer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def run_once(self) -> BatchResult | None:
        """Process one batch; ``None`` when the poll returned nothing."""
        records = self._consumer.poll_batch(self._max, self._timeout, self._max_bytes)
        if self._observer is not None:
            self._observer.polled(len(records))
        if not records:
            return None
        messages = [(record_source(r), r.value) for r in records]
        positions = [Position(f"{self._group}/{r.topic}/{r.partition}", r.offset) for r in records]
        result = self._processor.process(messages, positions)
        if self._observer is not None and hasattr(self._observer, "set_dedupe_window"):
            self._observer.set_dedupe_window(self._processor.window.ids_held)
        if self._quarantine is not None and result.refused_lines:
            for line in result.refused_lines:
                self._quarantine.send(
                    "quarantine", quarantine_envelope(line.source, line.raw, str(line.reason_code), line.reason)
                )
            self._quarantine.flush()
        if self._before_commit is not None:
            self._before_commit(result)
        next_offsets: dict[int, int] = {}
        for r in records:
            next_offsets[r.partition] = max(next_offsets.get(r.partition, 0), r.offset + 1)
        try:
            # the Kafka bus returns False when the group refused the commit (a rebalance)
            refused = self._consumer.commit(next_offsets) is False
        except BusUnavailable:
            if self._observer is not None:
                self._observer.batch_done(result, COMMIT_UNAVAILABLE)
            raise
        if self._observer is not None:
            self._observer.batch_done(result, COMMIT_REFUSED if refused else None)
        log.info(
            "batch committed",
            extra={"accepted": result.accepted, "refused": result.refused, "duplicates": result.duplicates},
        )
        return result

    def _raise_stopped(self) -> None:
        """A one-shot drain (``--until-idle``) that had to leave a partition stopped ends with
        its one line (exit 1): the other partitions were drained and stored meanwhile."""
        stopped = self._consumer.stopped_partitions()
        if not stopped:
            return
        first = stopped[min(stopped)]
        if len(stopped) == 1:
            raise first
        raise type(first)(f"{first} (and {len(stopped) - 1} more stopped partition(s): "
                          f"{', '.join(str(p) for p in sorted(stopped)[1:])}, named in the log)")

    def run(
        self,
        *,
        until_idle: bool = False,
        idle_polls: int = 2,
        stop: threading.Event | None = None,
        on_batch: Callable[[BatchResult], None] | None = None,
    ) -> RunTotals:
        """Loop until ``stop`` is set, or (``until_idle``) after ``idle_polls`` empty polls in a
        row with nothing left on the bus (a fetch of a large backlog can outlast two polls).

        :class:`BusUnavailable` ends an ``until_idle`` run; otherwise the loop logs it and tries
        again after ``retry_s``, doubling up to ``retry_max_s``, so that a long-running
        consumer rides out a broker restart."""
        totals = RunTotals()
        empty = 0
        outage = 0
        while stop is None or not stop.is_set():
            try:
                result = self.run_once()
            except BusUnavailable as exc:
                if until_idle:
                    raise  # a one-shot drain says at once that it could not finish
                # A long-running consumer waits for the bus instead of exiting. If the commit
                # was what failed, the batch is already stored: the next commit covers its
                # offsets, and a restart before that re-reads it and dedupe drops it.
                wait_s = min(self._retry_max_s, self._retry_s * 2 ** min(outage, 16))
                outage += 1
                log.warning("bus unavailable (%s); trying again in %.0f s", exc, wait_s)
                if stop is not None:
                    stop.wait(wait_s)
                else:
                    time.sleep(wait_s)
                continue
            if outage:
                log.warning("bus available again after %d failed attempts", outage)
                outage = 0
            if result is None:
                empty += 1
                if until_idle and empty >= idle_polls and self._consumer.caught_up():
                    self._raise_stopped()  # drained what it may read: a stopped partition fails the run
                    break
                continue
            empty = 0
            totals.add(result)
            if on_batch is not None:
                on_batch(result)
        return totals
