"""Parquet datasets with declared schemas and all-or-nothing batch writes.

Layout under a root (a local directory today; the same layout on S3-compatible storage
through ``pyarrow.fs`` tomorrow)::

    <root>/<dataset>/period=2026-11/date=2026-11-03/part-<batch>.parquet
    <root>/_staging/<batch>/…        files of a batch not yet committed (readers never look)
    <root>/_journal/<batch>.json     the commit record of a batch (redo log)

A :class:`Transaction` makes several files appear together or not at all:

1. every file is written complete under ``_staging/<batch>/``;
2. the journal entry listing ``staging → final`` moves (and any files the batch replaces,
   to delete — compaction uses this) is written atomically: the commit point;
3. the moves are done, then the deletes, and the journal entry removed.

:meth:`Store.recover` finishes the moves and deletes of every journaled batch and deletes
staging left by a batch that never reached its journal. Readers glob ``*.parquet`` under a dataset and so
only ever see files of committed batches. File names derive from the batch id, which the
caller derives from content, so a replayed batch overwrites instead of duplicating.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import posixpath
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from storage.errors import StorageError

PARQUET_COMPRESSION = "zstd"
# columns where nearly every value differs: a dictionary page only costs time (~12 % of a
# raw-file write) and saves no bytes
_NO_DICTIONARY = frozenset(
    {"event_id", "quarantine_id", "gpu_seconds", "busy_gpu_seconds", "gpu_microseconds",
     "busy_gpu_microseconds", "energy_joules", "raw", "reason"}
)
_STAGING = "_staging"
_JOURNAL = "_journal"


def _dictionary_columns(schema: pa.Schema) -> list[str]:
    return [name for name in schema.names if name not in _NO_DICTIONARY]


def partition_dir(partition_columns: Sequence[str], values: Sequence[str]) -> str:
    """Hive path fragment ``period=2026-11/date=2026-11-03``."""
    return "/".join(f"{col}={val}" for col, val in zip(partition_columns, values, strict=True))


def to_table(frame: pl.DataFrame, schema: pa.Schema) -> pa.Table:
    """A Polars frame as an Arrow table of exactly the declared schema (column order too).

    Raises :class:`StorageError` naming the columns that are missing, so a schema drift is
    caught at the write and never becomes an inferred type in a file.
    """
    missing = [name for name in schema.names if name not in frame.columns]
    if missing:
        raise StorageError(f"frame lacks declared columns: {', '.join(missing)}")
    table = frame.select(schema.names).to_arrow(compat_level=pl.CompatLevel.oldest())  # no string views to undo
    try:
        return table.cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise StorageError(f"frame does not fit the declared schema: {exc}") from exc


class Store:
    """A root holding datasets; every write and read of Parquet goes through here."""

    def __init__(self, root: str | os.PathLike[str], filesystem: pafs.FileSystem | None = None):
        self._fs = filesystem or pafs.LocalFileSystem()
        self.root = str(Path(root).absolute()) if filesystem is None else str(root)
        self._fs.create_dir(self.root, recursive=True)

    # -- paths -----------------------------------------------------------------------------
    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def files(self, dataset: str) -> list[str]:
        """Committed Parquet files of a dataset, sorted (deterministic order)."""
        base = self.path(dataset)
        info = self._fs.get_file_info(base)
        if info.type == pafs.FileType.NotFound:
            return []
        selector = pafs.FileSelector(base, recursive=True)
        found = [
            f.path
            for f in self._fs.get_file_info(selector)
            if f.type == pafs.FileType.File
            and f.path.endswith(".parquet")
            and not posixpath.basename(f.path).startswith((".", "_"))
        ]
        return sorted(found)

    # -- reads -----------------------------------------------------------------------------
    def scan(self, dataset: str, schema: pa.Schema) -> pl.LazyFrame:
        """A lazy frame over every committed file of ``dataset`` (empty frame if none).

        Columns come from the files themselves (partition columns are stored in the file),
        so the result has the declared schema without relying on Hive inference.
        """
        files = self.files(dataset)
        if not files:
            return pl.LazyFrame(schema=pl.from_arrow(schema.empty_table()).schema)
        return pl.scan_parquet(files, hive_partitioning=False)

    def read_table(self, path: str) -> pa.Table:
        with self._fs.open_input_file(path) as handle:
            return pq.read_table(handle)

    def read_bytes(self, path: str) -> bytes:
        with self._fs.open_input_stream(path) as handle:
            return handle.read()

    def exists(self, path: str) -> bool:
        return self._fs.get_file_info(path).type != pafs.FileType.NotFound

    # -- single atomic files (ledgers, manifests) ------------------------------------------
    def write_bytes_atomic(self, path: str, data: bytes) -> None:
        """Write ``data`` to ``path`` so that readers see the old file or the new one, never half."""
        parent = posixpath.dirname(path)
        self._fs.create_dir(parent, recursive=True)
        tmp = posixpath.join(parent, f".tmp-{uuid.uuid4().hex}")
        with self._fs.open_output_stream(tmp) as out:
            out.write(data)
        _fsync_local(self._fs, tmp)
        self._fs.move(tmp, path)

    def write_parquet_atomic(self, path: str, table: pa.Table) -> None:
        """Write one Parquet file atomically (temp file, then rename)."""
        parent = posixpath.dirname(path)
        self._fs.create_dir(parent, recursive=True)
        tmp = posixpath.join(parent, f".tmp-{uuid.uuid4().hex}")
        with self._fs.open_output_stream(tmp) as out:
            pq.write_table(table, out, compression=PARQUET_COMPRESSION)
        _fsync_local(self._fs, tmp)
        self._fs.move(tmp, path)

    def delete(self, path: str) -> None:
        if self.exists(path):
            self._fs.delete_file(path)

    # -- batches ---------------------------------------------------------------------------
    def transaction(self, batch_id: str) -> Transaction:
        return Transaction(self, batch_id)

    @contextlib.contextmanager
    def _writers_lock(self, exclusive: bool):
        """Shared for a transaction in flight, exclusive for recovery (local files only)."""
        if not isinstance(self._fs, pafs.LocalFileSystem):
            yield  # object stores: one writer per root is the deployment rule
            return
        fd = os.open(self.path("_journal.lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def recover(self) -> int:
        """Finish every journaled batch and drop staging of batches that never committed.

        Returns the number of batches whose moves were completed. Waits for transactions in
        flight (in this or another process) to commit first, so it is safe to call any time;
        the consumer calls it on start.
        """
        with self._writers_lock(exclusive=True):
            return self._recover()

    def _recover(self) -> int:
        completed = 0
        journal_dir = self.path(_JOURNAL)
        journaled: set[str] = set()
        for entry in self._list(journal_dir):
            if not entry.endswith(".json"):
                continue
            batch_id = posixpath.basename(entry)[: -len(".json")]
            journaled.add(batch_id)
            record = json.loads(self.read_bytes(entry))
            self._apply_moves(record["moves"])
            self._apply_deletes(record.get("deletes", []))
            self._fs.delete_file(entry)
            completed += 1
        for entry in self._list(self.path(_STAGING)):
            self._fs.delete_dir(entry)
        return completed

    def _list(self, directory: str) -> list[str]:
        if self._fs.get_file_info(directory).type == pafs.FileType.NotFound:
            return []
        return sorted(f.path for f in self._fs.get_file_info(pafs.FileSelector(directory)))

    def _apply_moves(self, moves: Iterable[Sequence[str]]) -> None:
        for staged, final in moves:
            if self.exists(staged):
                self._fs.create_dir(posixpath.dirname(final), recursive=True)
                self._fs.move(staged, final)
            elif not self.exists(final):
                raise StorageError(f"journaled file vanished before its move: {staged}")

    def _apply_deletes(self, paths: Iterable[str]) -> None:
        """Redo-safe: a path already gone is what a finished delete looks like."""
        for path in paths:
            if self.exists(path):
                self._fs.delete_file(path)


class Transaction:
    """Files staged together and committed all at once (see the module docstring)."""

    def __init__(self, store: Store, batch_id: str):
        if not batch_id or "/" in batch_id:
            raise StorageError(f"bad batch id {batch_id!r}")
        self._store = store
        self.batch_id = batch_id
        self._moves: list[tuple[str, str]] = []
        self._deletes: list[str] = []
        self._staging = store.path(_STAGING, batch_id)
        self._lock: contextlib.ExitStack | None = None

    def _hold_lock(self) -> None:
        if self._lock is None:
            self._lock = contextlib.ExitStack()
            self._lock.enter_context(self._store._writers_lock(exclusive=False))

    def release(self) -> None:
        """Give up the writers' lock (done by :meth:`commit`; call it when abandoning a batch)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self) -> Transaction:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def stage(
        self,
        dataset: str,
        frame: pl.DataFrame,
        schema: pa.Schema,
        partition_columns: Sequence[str],
    ) -> list[str]:
        """Write ``frame`` as one file per partition into staging; returns the final paths."""
        if frame.height == 0:
            return []
        self._hold_lock()
        fs = self._store._fs
        fs.create_dir(self._staging, recursive=True)
        finals = []
        groups = frame.partition_by(list(partition_columns), as_dict=True, maintain_order=True)
        for key in sorted(groups):
            part = groups[key]
            values = [str(v) for v in key]
            final = self._store.path(
                dataset, partition_dir(partition_columns, values), f"part-{self.batch_id}.parquet"
            )
            staged = posixpath.join(self._staging, f"{len(self._moves):05d}.parquet")
            with fs.open_output_stream(staged) as out:
                pq.write_table(
                    to_table(part, schema), out, compression=PARQUET_COMPRESSION,
                    use_dictionary=_dictionary_columns(schema),
                )
            _fsync_local(fs, staged)
            self._moves.append((staged, final))
            finals.append(final)
        return finals

    def delete(self, path: str) -> None:
        """Delete ``path`` as part of this batch: after its moves, at commit, journaled.

        The file stays visible until the commit, and once the journal entry is written the
        delete is redone by :meth:`Store.recover` after a crash: a reader never sees the
        replaced files and their replacement missing together. A path the batch moves a file
        to cannot also be deleted.
        """
        if path in {final for _, final in self._moves}:
            raise StorageError(f"{path} is written by batch {self.batch_id}; it cannot be deleted too")
        self._hold_lock()
        if path not in self._deletes:
            self._deletes.append(path)

    def commit(self) -> None:
        """Journal the moves and deletes (commit point), apply them, drop the journal entry."""
        try:
            self._commit()
        finally:
            self.release()

    def _commit(self) -> None:
        if not self._moves and not self._deletes:
            return
        if set(self._deletes) & {final for _, final in self._moves}:
            raise StorageError(f"batch {self.batch_id} would delete a file it writes")
        journal = self._store.path(_JOURNAL, f"{self.batch_id}.json")
        record: dict[str, object] = {"batch": self.batch_id, "moves": self._moves}
        if self._deletes:
            record["deletes"] = self._deletes
        self._store.write_bytes_atomic(journal, json.dumps(record).encode())
        self._store._apply_moves(self._moves)
        self._store._apply_deletes(self._deletes)
        self._store._fs.delete_file(journal)
        if self._store.exists(self._staging):
            self._store._fs.delete_dir(self._staging)


def _fsync_local(fs: pafs.FileSystem, path: str) -> None:
    """fsync a just-written local file so a power cut cannot leave it empty after rename."""
    if isinstance(fs, pafs.LocalFileSystem):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
