"""Bytes checked before they decide anything: a table file's SHA-256 against its commit.

Invariant 9 (docs/architecture.md): the dedupe asks ``raw`` whether an event id is already
stored. If it read a damaged file (a flipped bit in the ``event_id`` column), a re-sent event
would look new and be stored a second time, and once the file is restored from a backup both
copies would be live. So every file a dedupe lookup is about to read goes through
:meth:`VerifiedFiles.check` first:

* its bytes are hashed and compared with the SHA-256 its Delta commit recorded
  (:mod:`storage.deltalog`); a mismatch raises :class:`DamagedFile` naming the file, the hours
  it holds and the next step, which stops the lookup and so the batch (nothing is stored, the
  bus position does not move; once the file is restored the batch runs again and finds the
  event);
* a file the log lists that is gone raises :class:`MissingFile` the same way (restore it, or
  record the loss: ``gpuledger storage record-loss``);
* a good verdict is cached per (path, size, modification time, recorded hash), so a file is
  hashed once per process, and a file rewritten since (restored, truncated) is hashed again.
  A bad verdict is never cached: a restored file is accepted at the next look.

One :class:`VerifiedFiles` per :class:`~storage.dataset.Store` (:func:`verified_files`).
"""

from __future__ import annotations

import posixpath
import weakref
from collections.abc import Sequence

import pyarrow.fs as pafs

from storage.dataset import Store
from storage.deltalog import Recorded, TableLog
from storage.errors import StorageError


class DamagedFile(StorageError):
    """A table file's bytes are not what its commit recorded."""


class MissingFile(StorageError):
    """A file the table's log lists is gone."""


class VerifiedFiles:
    """Checks table files against their recorded SHA-256, caching good verdicts."""

    def __init__(self, store: Store):
        self._store = store
        self._logs: dict[str, TableLog] = {}
        self._good: set[tuple[str, int, int, str]] = set()

    def check(self, dataset: str, files: Sequence[str]) -> list[str]:
        """``files`` (full store paths of ``dataset``) unchanged, once each is known to hold the
        bytes its commit recorded; raises :class:`DamagedFile` / :class:`MissingFile`."""
        for full in files:
            self._check_one(dataset, full)
        return list(files)

    def _recorded(self, dataset: str, rel: str) -> Recorded | None:
        table_log = self._logs.get(dataset)
        if table_log is None:
            table_log = self._logs[dataset] = TableLog(self._store, dataset)
        found = table_log.live.get(rel)
        if found is None:
            found = table_log.refresh().live.get(rel)
        if found is None and rel in table_log.removed:  # removed after the caller's pinned version
            found = table_log.removed[rel][1]
        return found

    def _check_one(self, dataset: str, full: str) -> None:
        store = self._store
        rel = posixpath.relpath(full, store.path(dataset))
        recorded = self._recorded(dataset, rel)
        if recorded is None or recorded.sha256 is None:
            return  # committed without a hash (or removed long ago): nothing to compare against
        info = store.file_info(full)
        if info.type == pafs.FileType.NotFound:
            raise MissingFile(missing_line(dataset, rel, recorded))
        key = (full, int(info.size or 0), int(info.mtime_ns or 0), recorded.sha256)
        if key in self._good:
            return
        try:
            actual, _ = store.sha256_of(full)
        except FileNotFoundError:
            raise MissingFile(missing_line(dataset, rel, recorded)) from None
        if actual != recorded.sha256:
            raise DamagedFile(
                f"{dataset}/{rel} ({_holds(recorded)}) does not hold the bytes its commit recorded (SHA-256 "
                f"{actual[:16]}…, recorded {recorded.sha256[:16]}…): not read, so its hour's re-sends cannot be "
                "checked and nothing of this batch is stored; restore the file from a backup (the consumer then "
                "goes on where it stopped), or, if no backup exists, record the loss with "
                f"`gpuledger storage record-loss --file {dataset}/{rel} --reason TEXT`"
            )
        self._good.add(key)


def missing_line(dataset: str, rel: str, recorded: Recorded | None) -> str:
    held = f" ({_holds(recorded)})" if recorded is not None else ""
    return (
        f"{dataset}/{rel}{held} is listed by the table's Delta log but is gone: restore it from a backup, or, if "
        f"none exists, record the loss with `gpuledger storage record-loss --file {dataset}/{rel} --reason TEXT` "
        "(the month's findings and compliance ledger then show it)"
    )


def _holds(recorded: Recorded) -> str:
    lo = recorded.min_values.get("interval_start") or recorded.min_values.get("hour_start")
    hi = recorded.max_values.get("interval_start") or recorded.max_values.get("hour_start")
    rows = f"{recorded.rows:,} rows" if recorded.rows is not None else "rows unknown"
    return f"{rows}, {lo} to {hi}" if lo else rows


_PER_STORE: weakref.WeakKeyDictionary[Store, VerifiedFiles] = weakref.WeakKeyDictionary()


def verified_files(store: Store, dataset: str, files: Sequence[str]) -> list[str]:
    """``files`` once each holds its recorded bytes (the store's one :class:`VerifiedFiles`)."""
    checker = _PER_STORE.get(store)
    if checker is None:
        checker = _PER_STORE[store] = VerifiedFiles(store)
    return checker.check(dataset, files)
