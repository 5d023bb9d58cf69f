"""Exactly once across consumers: offsets stored with the rows, a bounded window, storage by hour.

Given / when / then over two :class:`BatchProcessor` instances sharing one store, as two
consumers in one group on two machines would (each with its own memory).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from spine_events import ACCOUNTS, event, jsonl

from storage.dataset import Store
from streams.dedupe import EventWindow
from streams.pipeline import BatchProcessor, Position

pytestmark = pytest.mark.unit

P0, P1 = "g/gpu.usage.v1/0", "g/gpu.usage.v1/1"


def messages(stream: str, first: int, count: int, hour: str = "2026-11-02T03", node: str = "n0"):
    """``count`` messages of one event each at offsets ``first…``, with their positions."""
    msgs, positions = [], []
    for offset in range(first, first + count):
        msgs.append((f"{stream}@{offset}", jsonl(event(f"{hour}:{offset % 60:02d}:00Z", node=node))))
        positions.append(Position(stream, offset))
    return msgs, positions


def stored_us(root: Path) -> int:
    files = Store(root).files("raw")
    return int(pl.read_parquet(files)["gpu_microseconds"].sum()) if files else 0


def test_a_rebalance_with_warm_caches_and_a_lost_commit_stores_each_event_once(tmp_path: Path) -> None:
    store_a, store_b = Store(tmp_path), Store(tmp_path)  # two machines, one shared store
    a, b = BatchProcessor(store_a, ACCOUNTS), BatchProcessor(store_b, ACCOUNTS)
    # given B's window already holds hour 03 (it consumed partition 1 there)
    b.process(*messages(P1, 0, 3, node="other"))
    # when A stores offsets 0..4 of partition 0 and loses its Kafka offset commit to a rebalance
    a.process(*messages(P0, 0, 5))
    # and B, now owning partition 0, reads it again from offset 0 (the last committed) to 9
    again = b.process(*messages(P0, 0, 10))
    # then B skipped what storage holds by offset and stored only 5..9
    assert (again.replayed, again.accepted, again.duplicates) == (5, 5, 0)
    assert stored_us(tmp_path) == (3 + 10) * 60_000_000
    assert b.stored_offsets([P0, P1]) == {P0: 9, P1: 2}


def test_a_zombie_member_cannot_commit_behind_the_new_owner(tmp_path: Path) -> None:
    """A keeps processing partition 0 after it moved to B: the commits race on the same app id;
    the loser re-reads the offsets and stores only what the winner did not."""
    a = BatchProcessor(Store(tmp_path), ACCOUNTS)

    class _OwnerCommitsFirst(Store):
        raced = False

        def write_files(self, dataset, frame, batch_id, *args, **kwargs):
            if dataset == "raw" and not self.raced:  # after the batch read, before its commit
                self.raced = True
                a.process(*messages(P0, 0, 8))  # the zombie commits 0..7 first
            return super().write_files(dataset, frame, batch_id, *args, **kwargs)

    b = BatchProcessor(_OwnerCommitsFirst(tmp_path), ACCOUNTS)
    result = b.process(*messages(P0, 0, 12))
    assert b.conflicts == 1  # its first commit lost the race and was re-filtered
    assert (result.replayed, result.accepted) == (8, 4)
    assert stored_us(tmp_path) == 12 * 60_000_000


class _TakesOverAtTheLookup(EventWindow):
    """A window whose first lookup lets another member (the partition's new owner) store
    ``owner_batch`` first: the moment a GC pause or a frozen VM would give it."""

    def __init__(self, store: Store, owner: BatchProcessor, owner_batch, **kwargs):
        super().__init__(store, **kwargs)
        self._owner, self._owner_batch = owner, owner_batch
        self.lookups = 0

    def lookup(self, rows, fingerprints, *args, **kwargs):
        self.lookups += 1
        if self.lookups == 1:
            self._owner.process(*self._owner_batch)
        return super().lookup(rows, fingerprints, *args, **kwargs)


def test_a_zombie_whose_late_event_is_looked_up_in_storage_cannot_commit_behind_the_new_owner(tmp_path: Path) -> None:
    """Issue 18 #1: the zombie's batch holds a late event (an hour outside the window), so its
    dedupe lookup reads raw's log mid-batch. That read must not move the version the batch's
    commit is checked against: the commit conflicts with the new owner's, and nothing is doubled."""
    # given raw already holds an old hour, and the stream has moved on past the window
    setup = BatchProcessor(Store(tmp_path), ACCOUNTS)
    setup.process(*messages(P1, 0, 2, hour="2026-11-02T00", node="old"))
    owner = BatchProcessor(Store(tmp_path), ACCOUNTS)
    msgs, positions = messages(P0, 0, 16)
    late = ("late", jsonl(event("2026-11-01T20:00:00Z", node="late")))
    batch = ([*msgs, late], [*positions, Position(P0, 16)])
    store = Store(tmp_path)
    zombie = BatchProcessor(store, ACCOUNTS, _TakesOverAtTheLookup(store, owner, batch, window_hours=2))
    # when the zombie processes the same 17 messages while the new owner stores them at its lookup
    result = zombie.process(*batch)
    # then its commit lost (it was checked against the version it read), and it stored nothing twice
    assert zombie.conflicts == 1
    assert (result.replayed, result.accepted) == (17, 0)
    raw = pl.read_parquet(Store(tmp_path).files("raw"))
    assert raw.height == raw["event_id"].n_unique() == 2 + 17


def test_a_commit_conflict_forgets_the_ids_held_in_memory(tmp_path: Path) -> None:
    """After a lost commit the window is cleared: the winner stored ids this process never saw.
    (Mutation "do not clear the window after a conflict" stores the re-sent event twice.)"""
    owner = BatchProcessor(Store(tmp_path), ACCOUNTS)
    msgs, positions = messages(P0, 0, 2)  # the new owner stores offsets 0 and 1
    store = Store(tmp_path)
    zombie = BatchProcessor(store, ACCOUNTS, _TakesOverAtTheLookup(store, owner, (msgs, positions), window_hours=2))
    # the zombie's batch: the same two messages, then a spool's re-send of offset 1's event
    resend = ("spool", jsonl(event("2026-11-02T03:01:00Z", node="n0")))
    result = zombie.process([*msgs, resend], [*positions, Position(P0, 2)])
    assert zombie.conflicts == 1
    assert (result.replayed, result.accepted, result.duplicates) == (2, 0, 1)
    raw = pl.read_parquet(Store(tmp_path).files("raw"))
    assert raw.height == raw["event_id"].n_unique() == 2


def test_a_crash_between_the_quarantine_and_raw_commits(tmp_path: Path) -> None:
    class _DiesAtRaw(Store):
        def write_files(self, dataset, *args, **kwargs):
            if dataset == "raw":
                raise KeyboardInterrupt("killed")
            return super().write_files(dataset, *args, **kwargs)

    bad = (f"{P0}@5", b'{"schema_version": 1, "event_id": "nope"}\n' + jsonl(event("2026-11-02T03:30:00Z")))
    batch = [*zip(*messages(P0, 0, 5), strict=True), (bad, Position(P0, 5))]
    msgs, positions = [m for m, _ in batch], [p for _, p in batch]
    with pytest.raises(KeyboardInterrupt):
        BatchProcessor(_DiesAtRaw(tmp_path), ACCOUNTS).process(msgs, positions)
    store = Store(tmp_path)
    assert store.files("raw") == [] and len(store.files("quarantine")) == 1
    result = BatchProcessor(store, ACCOUNTS).process(msgs, positions)  # restarted
    assert (result.accepted, result.replayed) == (6, 0)
    assert pl.read_parquet(store.files("quarantine")).height == 1  # not stored twice
    assert stored_us(tmp_path) == 6 * 60_000_000


def test_a_resend_older_than_the_window_is_checked_against_storage_for_its_hour(tmp_path: Path) -> None:
    store = Store(tmp_path)
    window = EventWindow(store, window_hours=2)
    live = BatchProcessor(store, ACCOUNTS, window)
    old = event("2026-11-02T01:07:00Z", node="spool")
    live.process([("m0", jsonl(old))])
    for hour in range(2, 10):  # the stream moves on; hour 01 leaves the window
        live.process([(f"m{hour}", jsonl(*(event(f"2026-11-02T{hour:02d}:{m:02d}:00Z") for m in range(30))))])
    assert window.hours_held <= 2 and window.ids_held <= 60  # bounded by the load, not history
    # when a collector's spool re-sends the old interval, beside a new one of that hour
    fresh = event("2026-11-02T01:08:00Z", node="spool")
    result = live.process([("resend", jsonl(old, fresh))])
    # then the old one is found in storage (hour 01 only) and the new one stored
    assert (result.accepted, result.duplicates) == (1, 1)
    assert window.hours_held <= 2


def test_an_id_stored_by_an_earlier_process_is_in_the_window_of_the_next(tmp_path: Path) -> None:
    e = event("2026-11-02T03:00:00Z")
    BatchProcessor(Store(tmp_path), ACCOUNTS).process([("m", jsonl(e))])
    result = BatchProcessor(Store(tmp_path), ACCOUNTS).process([("m2", jsonl(e))])
    assert (result.accepted, result.duplicates) == (0, 1)


def test_a_member_assigned_partitions_forgets_its_ids_and_resumes_from_storage(tmp_path: Path) -> None:
    """A re-send of an event the previous owner stored must not pass a warm window: the window
    is cleared when partitions are assigned, and the resume offsets come from storage."""
    from streams.consumer import StreamConsumer

    class _Partitioned:  # the in-memory twin of a partitioned bus consumer, as far as assignment goes
        topic = "gpu.usage.v1"
        listener = None

        def listen(self, listener):
            self.listener = listener

    processor = BatchProcessor(Store(tmp_path), ACCOUNTS)
    processor.process(*messages(P1, 0, 3, node="mine"))  # warms hour 03
    BatchProcessor(Store(tmp_path), ACCOUNTS).process(*messages(P0, 0, 4))  # the previous owner of 0
    bus = _Partitioned()
    StreamConsumer(bus, processor, group="g")  # type: ignore[arg-type]
    assert processor.window.hours_held == 1
    assert bus.listener.on_assign([0, 1]) == {0: 4, 1: 3}
    assert processor.window.hours_held == 0
    # then a spool re-send of partition 0's event (a new message) is found as a duplicate
    resent = processor.process([("spool", jsonl(event("2026-11-02T03:02:00Z", node="n0")))])
    assert (resent.accepted, resent.duplicates) == (0, 1)


def test_the_window_answers_exactly_like_a_set_of_128_bit_ids() -> None:
    """HourIds (sorted runs, binary search) against a Python set, including ids that share
    their high 64 bits: no false "seen" (a lost event), no false "new" (a double count)."""
    import numpy as np

    from streams.dedupe import HourIds

    rng = np.random.default_rng(20261201)
    held, truth = HourIds(), set()
    previous = None
    for step in range(120):
        n = int(rng.integers(1, 3000))
        hi = rng.integers(0, 2**63, n, dtype=np.uint64)
        lo = rng.integers(0, 2**63, n, dtype=np.uint64)
        if previous is not None and step % 3 == 0:
            hi[:10], lo[:10] = previous[0][:10], previous[1][:10] + 1  # same high word, other low word
            hi[10:20], lo[10:20] = previous[0][10:20], previous[1][10:20]  # the very same ids again
        expected = [(a, b) in truth for a, b in zip(hi.tolist(), lo.tolist(), strict=True)]
        assert held.contains(hi, lo).tolist() == expected
        held.add(hi, lo)
        truth.update(zip(hi.tolist(), lo.tolist(), strict=True))
        previous = (hi, lo)
    assert len(held.runs) <= 12  # O(log n) runs


def test_ids_sharing_their_high_word_are_each_found_with_their_own_fingerprint() -> None:
    """Runs are ordered by the high word only: ids that share it (2^-64 per pair, forced here)
    sit side by side in arrival order, and each is found, with its own fingerprint, whichever
    position of the group it holds and across merged runs; an absent low word is not found."""
    import numpy as np

    from streams.dedupe import HourIds

    held = HourIds()
    shared = np.array([7, 7, 7, 3, 9], dtype=np.uint64)
    held.add(shared, np.array([30, 10, 20, 1, 2], dtype=np.uint64), np.array([1, 2, 3, 4, 5], dtype=np.uint64))
    held.add(np.array([7, 3], dtype=np.uint64), np.array([5, 6], dtype=np.uint64), np.array([6, 7], dtype=np.uint64))
    for step in range(1, 40):  # more runs, merged into the first ones
        held.add(np.array([100 + step], dtype=np.uint64), np.array([step], dtype=np.uint64))
    hi = np.array([7, 7, 7, 7, 3, 3, 9, 7, 3, 8], dtype=np.uint64)
    lo = np.array([10, 20, 30, 5, 1, 6, 2, 40, 2, 10], dtype=np.uint64)
    found, stored = held.lookup(hi, lo)
    assert found.tolist() == [True] * 7 + [False] * 3
    assert stored.tolist() == [2, 3, 1, 6, 4, 7, 5, 0, 0, 0]
    assert held.size == 7 + 39


def test_a_conflicting_resend_is_quarantined_beside_a_pointer_to_the_stored_copy(tmp_path: Path) -> None:
    """Same event_id, other values (a re-sent line with another project, another duration):
    not silently dropped as a duplicate, not billed, kept in quarantine with its reason;
    an identical re-send is a plain duplicate. In the window, outside it, and within a batch."""
    store = Store(tmp_path)
    processor = BatchProcessor(store, ACCOUNTS, EventWindow(store, window_hours=2))
    original = event("2026-11-02T03:07:00Z")
    other = dict(original, gpu_seconds=30.0, busy_gpu_seconds=10.0)
    old = event("2026-11-02T00:05:00Z", node="old")
    processor.process([("m0", jsonl(original, old))])
    # in the window: an identical copy and a conflicting one
    result = processor.process([("m1", jsonl(original, other))])
    assert (result.accepted, result.duplicates, result.refused) == (0, 1, 1)
    # outside the window (hour 00 after the stream moved to 05), and within one batch
    processor.process([("m2", jsonl(event("2026-11-02T05:00:00Z")))])
    old_other = dict(old, project="kaist-vision")
    fresh = event("2026-11-02T05:01:00Z")
    result = processor.process([("m3", jsonl(old_other, fresh, dict(fresh, samples=1)))])
    assert (result.accepted, result.duplicates, result.refused) == (1, 0, 2)
    quarantine = pl.read_parquet(store.files("quarantine"))
    assert quarantine["reason_code"].to_list() == ["conflicting_duplicate"] * 3
    assert all("was stored before with other values" in r and "raw/period=2026-11/date=2026-11-02" in r
               for r in quarantine["reason"])
    assert stored_us(tmp_path) == 4 * 60_000_000  # original, old, the 05:00 one, fresh: nothing else billed
