"""The Kafka group member: a consumer of one topic in a consumer group that commits only when told.

Storage's offsets win (:mod:`streams.bus`). Given a :class:`~streams.bus.RebalanceListener`
(:meth:`KafkaConsumer.listen`), every partition assigned to the member is paused inside
kafka-python's rebalance callback (which runs on its event loop and must not block it), and
settled by the next :meth:`~KafkaConsumer.poll_batch`, on the caller's thread, before any
record of it is handed out:

1. the listener says where the partition resumes (storage's stored offset + 1; nothing
   stored: the beginning of the log);
2. that offset is checked against the partition's log: past its end (a topic re-created,
   offsets restarted; :class:`~streams.errors.StoredOffsetBeyondLog`) or before its start
   (retention deleted records never stored; :class:`~streams.errors.StoredOffsetBeforeLog`)
   **stops that partition only**: it stays paused (nothing of it is read, stored or committed),
   its one line is logged at ERROR and kept in :meth:`KafkaConsumer.stopped_partitions`, and
   the member goes on with its other partitions. A stopped partition is checked again at each
   assignment of it (a rebalance, a restart): after ``gpuledger offsets rebase`` it resumes;
   until then every member that is assigned it stops it the same way;
3. the member seeks there, names a group offset that was ahead of it (a lost newest commit:
   the bus's position is only a hint), and commits it to the group, so Kafka's own lag tools
   count from what storage holds (no phantom lag after a rebalance);
4. the partition is resumed.

Records already polled for a partition that is revoked while a batch is being polled are
dropped, never handed out: a batch holds only partitions the member still owns. A member that
stops answering mid-batch (frozen past the session timeout) loses its partitions without a
callback; its bus commit is then refused (:meth:`KafkaConsumer.commit` returns ``False``) and
its Delta commit too (``streams.checkpoint``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import kafka.errors as kerr
from kafka import KafkaConsumer as _KConsumer
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.structs import OffsetAndMetadata, TopicPartition

from streams.bus import DEFAULT_MAX_BATCH_BYTES, BusRecord, RebalanceListener, RevokeCallback, offset_beyond_log
from streams.errors import StoredOffsetBeforeLog, StoredOffsetBeyondLog, StreamError
from streams.kafka.connection import MAX_MESSAGE_BYTES, REBALANCE_ERRORS, client_config, translate

if TYPE_CHECKING:
    from streams.kafka.bus import KafkaBus

log = logging.getLogger(__name__)

# a batch's first poll: few enough that their values stay under the smallest byte bound (1 MiB)
# for the programme's messages (a node's minute is ~35 KB, a bulk message ~300 KB); the loop
# in ``poll_batch`` then sizes each further poll by the room left
_FIRST_POLL_RECORDS = 3


class _Rebalances(ConsumerRebalanceListener):
    """kafka-python's callbacks, forwarded to the member (they run on kafka-python's loop)."""

    def __init__(self, member: KafkaConsumer):
        self._member = member

    def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        self._member._revoked_now(sorted(tp.partition for tp in revoked))

    def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self._member._assigned_now(sorted(tp.partition for tp in assigned))


class KafkaConsumer:
    """:class:`streams.bus.Consumer` on Kafka: a group member that commits only when told
    (see the module docstring for how assignments are settled against storage)."""

    lag_unit = "records"  # what :meth:`lag` counts

    def __init__(
        self,
        bus: KafkaBus,
        topic: str,
        group: str,
        on_revoke: RevokeCallback | None,
        fetch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
    ):
        self._bus = bus
        self._sasl = bus._sasl
        self.topic = topic
        self.group = group
        self._on_revoke = on_revoke
        self._listener: RebalanceListener | None = None
        self._lock = threading.Lock()
        self._unsettled: set[int] = set()  # assigned, paused, not yet sought to storage's offset
        self._revoked: set[int] = set()  # revoked since the last poll returned
        self._stopped: dict[int, StreamError] = {}  # assigned, kept paused: storage and the log disagree
        s = bus.settings
        try:
            self._consumer = _KConsumer(
                client_id=f"{bus.client_id}-consumer",
                group_id=group,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                max_partition_fetch_bytes=MAX_MESSAGE_BYTES,
                # what one fetch brings ahead of the polls (soft: a larger message still comes);
                # it waits, compressed, in kafka-python's buffer next to the batch being processed
                fetch_max_bytes=fetch_bytes,
                session_timeout_ms=int(bus.session_timeout_s * 1000),
                heartbeat_interval_ms=int(max(0.5, bus.session_timeout_s / 4) * 1000),
                # the longest a batch step (write + commit) may take before the group evicts
                # this member and hands its partitions on (kafka-python's default is 5 min)
                max_poll_interval_ms=s.max_poll_interval_ms,
                bootstrap_timeout_ms=int(bus.connect_timeout_s * 1000),
                **client_config(s),
            )
            self._consumer.subscribe([topic], listener=_Rebalances(self))
            # Fetch metadata after subscribing and before joining. Without it kafka-python
            # joins with no partition metadata (the member gets no partitions), or assigns
            # against a stale snapshot and rebalances again at the next metadata refresh,
            # in the middle of the first batch.
            self._consumer.topics()
        except kerr.KafkaError as exc:
            raise translate(exc, f"connecting a consumer of {topic} in group {group}", sasl=self._sasl) from exc
        except (ValueError, TypeError, AssertionError) as exc:
            raise translate(exc, f"configuring a consumer of {topic}", sasl=self._sasl) from exc
        self._joined = False

    def __repr__(self) -> str:
        return f"KafkaConsumer(topic={self.topic!r}, group={self.group!r}, bus={self._bus!r})"

    # -- assignments ----------------------------------------------------------------------
    def listen(self, listener: RebalanceListener) -> None:
        """Settle every partition assigned from now on against ``listener`` (storage)."""
        self._listener = listener
        with self._lock:
            held = [tp.partition for tp in self._consumer.assignment()]
        if held:  # assigned before the listener came: settle those too
            self._assigned_now(sorted(held))

    def _assigned_now(self, partitions: list[int]) -> None:
        log.info("partitions assigned: %s", partitions)
        if self._listener is None or not partitions:
            return
        with self._lock:
            self._unsettled.update(partitions)
            self._revoked.difference_update(partitions)
        # no network call, no storage read here: kafka-python's loop (heartbeats) waits on us
        self._consumer.pause(*(TopicPartition(self.topic, p) for p in partitions))

    def _revoked_now(self, partitions: list[int]) -> None:
        if not partitions:
            return
        log.info("partitions revoked: %s", partitions)
        with self._lock:
            self._revoked.update(partitions)
            self._unsettled.difference_update(partitions)
            for p in partitions:  # its next owner checks it again (and stops it, until rebased)
                self._stopped.pop(p, None)
        for callback in (self._on_revoke, self._listener.on_revoke if self._listener else None):
            if callback is not None:
                try:
                    callback(partitions)
                except Exception:  # noqa: BLE001 - never into kafka-python's loop
                    log.exception("on_revoke of %s failed", self.topic)

    def _settle(self) -> None:
        """Seek the partitions assigned since the last poll to storage's offsets (module
        docstring, steps 1-4). Runs on the caller's thread, between polls."""
        with self._lock:
            partitions = sorted(self._unsettled)
        if not partitions or self._listener is None:
            return
        wanted = self._listener.on_assign(partitions)
        tps = {p: TopicPartition(self.topic, p) for p in partitions}
        timeout_ms = int(max(self._bus.connect_timeout_s, 5.0) * 1000)
        try:
            begins = self._consumer.beginning_offsets(list(tps.values()), timeout_ms=timeout_ms)
            ends = self._consumer.end_offsets(list(tps.values()), timeout_ms=timeout_ms)
            targets: dict[int, int] = {}
            stopped: dict[int, StreamError] = {}
            for p, tp in tps.items():
                target = wanted.get(p)
                if target is not None and target > ends[tp]:
                    stopped[p] = StoredOffsetBeyondLog(offset_beyond_log(self.topic, p, target - 1, ends[tp], "kafka"))
                    continue
                if target is not None and target < begins[tp]:
                    stopped[p] = StoredOffsetBeforeLog(
                        f"partition {p} of {self.topic}: storage holds it up to offset {target - 1}, but the log now "
                        f"starts at offset {begins[tp]}: records {target}..{begins[tp] - 1} were deleted (retention) "
                        "before they were stored; re-send them from the collectors' spools or the source files "
                        "(gpuledger ingest), then re-base the partition (gpuledger offsets rebase)"
                    )
                    continue
                targets[p] = begins[tp] if target is None else target
                committed = self._consumer.committed(tp, timeout_ms=timeout_ms)
                if committed is not None and committed > targets[p]:
                    log.warning(
                        "partition %d of %s: group %s had committed offset %d, ahead of storage (%s); storage wins, "
                        "reading resumes at offset %d", p, self.topic, self.group, committed,
                        "nothing stored" if target is None else f"stored up to {target - 1}", targets[p],
                    )
                elif committed != targets[p]:
                    log.info("partition %d of %s: resuming at offset %d, the first one storage does not hold",
                             p, self.topic, targets[p])
        except kerr.IllegalStateError:
            return  # a rebalance took a partition meanwhile: the next poll settles the new set
        except kerr.KafkaError as exc:
            raise translate(exc, f"looking up the offsets of {self.topic}", sasl=self._sasl) from exc
        with self._lock:
            still = [p for p in partitions if p in self._unsettled]
            self._unsettled.difference_update(still)
            settled = [p for p in still if p not in stopped]
            newly = [p for p in still if p in stopped and str(self._stopped.get(p)) != str(stopped[p])]
            self._stopped.update({p: stopped[p] for p in still if p in stopped})
        for p in newly:  # stays paused: never sought, read, stored or committed until re-based
            log.error("%s; the member goes on with its other partitions", stopped[p])
        for p in settled:
            self._consumer.seek(tps[p], targets[p])
        self.commit({p: targets[p] for p in settled})  # the group's offsets tell the truth
        self._consumer.resume(*(tps[p] for p in settled))

    # -- reading --------------------------------------------------------------------------
    def _poll(self, timeout_s: float, max_records: int) -> list[BusRecord]:
        try:
            polled = self._consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        except kerr.KafkaError as exc:
            raise translate(exc, f"polling {self.topic}", sasl=self._sasl) from exc
        with self._lock:
            unsettled = set(self._unsettled) | set(self._stopped)
        out: list[BusRecord] = []
        for tp in sorted(polled, key=lambda tp: tp.partition):
            if tp.partition in unsettled:
                continue  # fetched before the pause took hold: read again once sought (never, if stopped)
            out.extend(BusRecord(r.topic, r.partition, r.offset, r.key, r.value) for r in polled[tp])
        self._settle()
        return out

    def _drop_revoked(self, records: list[BusRecord]) -> list[BusRecord]:
        """Records held for this batch whose partition was revoked since: not ours to write."""
        with self._lock:
            revoked, self._revoked = self._revoked, set()
        if not revoked:
            return records
        kept = [r for r in records if r.partition not in revoked]
        if len(kept) != len(records):
            log.warning("dropped %d records of partitions %s revoked while the batch was polled",
                        len(records) - len(kept), sorted(revoked))
        return kept

    def _wait_for_assignment(self, timeout_s: float) -> list[BusRecord]:
        """The first poll joins the group; wait for it so that ``--until-idle`` does not read
        "no records yet" as "idle". Bounded: a member with no partitions goes on after it."""
        deadline = time.monotonic() + max(timeout_s, self._bus.session_timeout_s * 3)
        while time.monotonic() < deadline:
            records = self._poll(0.1, 1)
            if records or self._consumer.assignment():
                self._joined = True
                if not records:
                    self._resolve_positions(deadline)
                return records
        self._joined = True
        return []

    def _resolve_positions(self, deadline: float) -> None:
        """Look up where each assigned partition resumes (committed offset, or earliest) now,
        so that the next poll fetches at once instead of spending its timeout on it."""
        try:
            for tp in self._consumer.assignment():
                left_ms = int((deadline - time.monotonic()) * 1000)
                if left_ms <= 0:
                    return
                self._consumer.position(tp, timeout_ms=left_ms)
        except kerr.IllegalStateError:
            return  # a rebalance took the partition meanwhile: the next poll sorts it out
        except kerr.KafkaError as exc:
            raise translate(exc, f"looking up the positions of {self.topic}", sasl=self._sasl) from exc

    def poll_batch(
        self, max_records: int, timeout_s: float, max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES
    ) -> list[BusRecord]:
        """Up to ``max_records`` records: waits up to ``timeout_s`` for the first, then takes
        whatever else is already fetched, so batches are large when the topic has a backlog.
        A batch also stops growing once it holds ``max_batch_bytes`` of values (memory stays
        bounded when messages carry thousands of events each; records fetched past the bound
        stay in kafka-python's buffer for the next poll), and holds no record of a partition
        revoked while it was polled."""
        records: list[BusRecord] = []
        if not self._joined:
            records = self._drop_revoked(self._wait_for_assignment(timeout_s))
        if not records:
            # a first poll of a few records: kafka-python hands out everything it has fetched
            # (hundreds of MB of Arrow batches on a backlog), the loop below stops at the cap
            records = self._drop_revoked(self._poll(timeout_s, min(max_records, _FIRST_POLL_RECORDS)))
        size = sum(len(r.value) for r in records)
        while records and len(records) < max_records and size < max_batch_bytes:
            room = (max_batch_bytes - size) * len(records) // max(size, 1)  # records that fit
            if room < 1:
                break  # one more record of the batch's average size would pass the bound
            more = self._poll(0.0, min(max_records - len(records), 1000, room))
            records = self._drop_revoked(records)  # a rebalance in that poll: keep only what is ours
            if not more:
                break
            records.extend(more)
            size = sum(len(r.value) for r in records)
        return records

    def caught_up(self) -> bool:
        with self._lock:
            if self._unsettled:
                return False  # assigned partitions not sought yet: poll again
        with self._lock:
            stopped = set(self._stopped)
        # a stopped partition never moves until re-based: the rest decides (the loop names it)
        assigned = [tp for tp in self._consumer.assignment() if tp.partition not in stopped]
        if not assigned:
            return True
        try:
            ends = self._consumer.end_offsets(assigned)
            return all(self._consumer.position(tp) >= ends[tp] for tp in assigned)
        except kerr.IllegalStateError:
            return False  # a rebalance took a partition meanwhile: poll again
        except kerr.KafkaError as exc:
            raise translate(exc, f"looking up the end offsets of {self.topic}", sasl=self._sasl) from exc

    def commit(self, next_offsets: Mapping[int, int]) -> bool:
        """Commit; ``False`` when the group refused it because it rebalanced meanwhile (the
        batch is read again from storage's offsets), ``True`` when committed. Other failures raise."""
        if not next_offsets:
            return True
        offsets = {
            TopicPartition(self.topic, partition): OffsetAndMetadata(offset, "", -1)
            for partition, offset in next_offsets.items()
        }
        deadline = time.monotonic() + self._bus.delivery_timeout_s
        while True:
            try:
                self._consumer.commit(offsets=offsets)
                return True
            except REBALANCE_ERRORS as exc:
                # The group moved on while the batch was being written: these partitions'
                # next owner (maybe this member again) resumes at storage's offsets.
                log.warning(
                    "offsets of %s not committed, the group rebalanced meanwhile (%s); "
                    "the partitions' next owner resumes where storage says", self.topic, exc,
                )
                return False
            except kerr.KafkaError as exc:
                if exc.retriable and time.monotonic() < deadline:
                    time.sleep(0.5)  # coordinator moving or restarting: try again
                    continue
                raise translate(exc, f"committing offsets of {self.topic}", sasl=self._sasl) from exc

    def lag(self) -> dict[int, int]:
        """Per assigned partition, records between the position and the end of the log (the
        end offsets are one request to the broker: ask every few seconds, not per record)."""
        assigned = list(self._consumer.assignment())
        if not assigned:
            return {}
        timeout_ms = int(self._bus.connect_timeout_s * 1000)
        try:
            ends = self._consumer.end_offsets(assigned, timeout_ms=timeout_ms)
            positions = {tp: self._consumer.position(tp, timeout_ms=timeout_ms) for tp in assigned}
        except kerr.IllegalStateError:
            return {}  # a rebalance took a partition meanwhile: the next look sees the new set
        except kerr.KafkaError as exc:
            raise translate(exc, f"looking up the lag of {self.topic}", sasl=self._sasl) from exc
        # a position not resolved yet (just assigned) is left out rather than guessed
        return {tp.partition: max(0, ends[tp] - at) for tp, at in positions.items() if at is not None}

    def stopped_partitions(self) -> dict[int, StreamError]:
        """Assigned partitions kept paused because storage's offset and the log disagree (each
        with the error whose one line names it and the ``gpuledger offsets rebase`` to run)."""
        with self._lock:
            return dict(self._stopped)

    def assigned_partitions(self) -> Sequence[int]:
        """The partitions this member holds now (for diagnostics and tests)."""
        return sorted(tp.partition for tp in self._consumer.assignment())

    def close(self) -> None:
        try:
            self._consumer.close(autocommit=False)
        except kerr.KafkaError as exc:  # leaving the group failed: the session times out
            log.warning("closing the consumer of %s: %s", self.topic, exc)
