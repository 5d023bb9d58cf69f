"""One batch, one version: what a batch reads of storage and the commit it makes, pinned.

A :class:`Checkpoint` is opened at the start of every batch (:meth:`Checkpoints.open`) and
pins one Delta version of ``raw`` and one of ``quarantine`` (:class:`storage.delta.PinnedTable`).
Everything the batch asks storage goes through it, and nothing else may move it:

* the offsets the batch filters by (:meth:`Checkpoint.stored_offsets`: per bus partition, the
  last offset the table records in its ``txn`` for app id ``<group>/<topic>/<partition>``);
* every dedupe lookup of an hour that is not held in memory (:meth:`Checkpoint.files_overlapping`,
  which :class:`streams.dedupe.EventWindow` reads through);
* the batch's two commits (:meth:`Checkpoint.commit`), which delta-rs checks against the
  pinned versions: if any other writer committed the same app id after them (a member that
  took over a partition this one still thinks it owns: a zombie after a GC pause, a frozen VM,
  a slow write past the session timeout), the commit fails with
  :class:`~storage.delta.CommitConflict`, and the batch is filtered again from a new checkpoint.

Without the pin, a read in the middle of the batch (a late event's hour looked up in storage)
refreshed the table's shared snapshot, and a zombie's commit was checked against a base that
already held the new owner's commit: it went through, and the partition's records were stored
twice (issue 18).

Cost per batch: two incremental log reads (``raw``, ``quarantine``), each one listing of
``_delta_log`` plus the commits written since the previous batch (one per batch of each
member: a few small JSON objects). Memory: the two snapshots' file lists, as before.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence

from storage.dataset import Store
from storage.delta import NewFile, PinnedTable

RAW = "raw"
QUARANTINE = "quarantine"


class Checkpoint:
    """One batch's view of ``raw`` and ``quarantine``; at most one commit to each."""

    def __init__(self, store: Store, pins: Mapping[str, PinnedTable], versions: Mapping[str, int]):
        self._store = store
        self._pins = dict(pins)
        self.versions = dict(versions)  # table -> the version pinned (for logs and tests)

    def stored_offsets(self, streams: Iterable[str], table: str = RAW) -> dict[str, int]:
        """Per stream (``<group>/<topic>/<partition>``), the last offset ``table`` holds at the
        pinned version; streams it holds nothing of are absent."""
        pin = self._pins[table]
        return {s: v for s in streams if (v := pin.transaction_version(s)) is not None}

    def files_overlapping(self, dataset: str, column: str, lo: object, hi: object) -> list[str]:
        """Files of ``dataset`` (``raw``) at the pinned version whose ``column`` range touches
        ``[lo, hi)``, as store paths (what :meth:`Store.scan_files` reads)."""
        return [self._store.path(dataset, p) for p in self._pins[dataset].files_overlapping(column, lo, hi)]

    def commit(
        self, table: str, files: Sequence[NewFile], txns: Mapping[str, int], note: Mapping[str, str] | None = None
    ) -> None:
        """Commit ``files`` and ``txns`` to ``table``, checked against the pinned version
        (``note``: entries for the commit's ``commitInfo``). Raises
        :class:`~storage.delta.CommitConflict` when another writer got in the way."""
        self._pins[table].commit(files, txns=txns, metadata=note)


class Checkpoints:
    """Opens one :class:`Checkpoint` per batch over pins that only it advances."""

    def __init__(self, store: Store, tables: Sequence[str] = (RAW, QUARANTINE)):
        self._store = store
        self._tables = tuple(tables)
        self._pins: dict[str, PinnedTable] = {}

    def open(self) -> Checkpoint:
        """A checkpoint at the newest version of each table (reads the log entries written
        since the previous batch, nothing more)."""
        versions = {}
        for table in self._tables:
            pin = self._pins.get(table)
            if pin is None:
                pin = self._pins[table] = self._store.table(table).pinned()
            versions[table] = pin.advance()
        return Checkpoint(self._store, self._pins, versions)


REBASE_NOTE = "gpuledger.rebase"  # commitInfo key of an operator's re-base (who, why, from, to)


def rebase(store: Store, stream: str, next_offset: int, *, operator: str, reason: str) -> dict[str, int | None]:
    """Record, deliberately, that ``stream`` (``<group>/<topic>/<partition>``) resumes at
    ``next_offset``: one commit to ``quarantine`` and one to ``raw`` setting the stream's
    ``txn`` to ``next_offset - 1``, each with a ``commitInfo`` entry saying who, why, and the
    offsets before and after (``DESCRIBE HISTORY`` / ``DeltaTable.history()`` shows it).

    For a topic that was re-created (its offsets restarted), after the operator checked that
    what the old topic held is stored. Returns each table's offset before the re-base."""
    if next_offset < 0:
        raise ValueError("the first offset to read must be 0 or more")
    if not reason.strip():
        raise ValueError("a re-base needs a reason (it is kept in the table's history)")
    before: dict[str, int | None] = {}
    checkpoint = Checkpoints(store).open()
    for table in (QUARANTINE, RAW):
        old = checkpoint.stored_offsets([stream], table).get(stream)
        before[table] = old
        note = {REBASE_NOTE: json.dumps(
            {"stream": stream, "operator": operator, "reason": reason, "from": old, "to": next_offset - 1},
            sort_keys=True,
        )}
        checkpoint.commit(table, [], {stream: next_offset - 1}, note)
    return before
