"""Delta Lake tables through ``deltalake`` (delta-rs): the commit point of every shared dataset.

This is the only module that imports ``deltalake`` (STYLE 10). A :class:`DeltaDataset` is one
table (``raw``, ``quarantine``, ``usage_hourly``) under the store root; its files are written
by :class:`storage.dataset.Store` with our own declared schemas and deterministic names, then
made visible by one Delta commit that lists them (``add`` actions), the files they replace
(``remove``), and optionally *application transactions* (``txn``: an app id and a version).

Why this holds on object storage with several writers on several machines:

* a commit is the creation of ``_delta_log/<version>.json``; delta-rs creates it with a
  conditional put (``If-None-Match`` on S3, ``conditional_put=etag``; an exclusive create on
  a local disk), so two writers can never both make version N: the loser re-reads the log
  and retries if its actions do not conflict, or fails with :class:`CommitConflict`;
* a commit that sets the ``txn`` of an app id conflicts with any concurrent commit that set
  the same app id (checked by delta-rs): a consumer that lost its Kafka partition (a zombie)
  cannot commit behind the new owner's back — it is told, re-reads, and filters;
* files not listed by a committed version are invisible to every reader, so a writer that
  dies after writing files but before its commit leaves only garbage for ``vacuum``.

Tables are not Delta-partitioned: partition values (``period``, ``date``) stay inside every
file as declared columns (a file read alone still says where it belongs, and DuckDB/pyarrow
read the files directly), and files sit in Hive-style directories, which the store uses for
prefix listings. Each ``add`` carries min/max statistics for pruning.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import pyarrow as pa
from deltalake import CommitProperties, DeltaTable, Transaction
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError
from deltalake.transaction import AddAction, RemoveAction

from storage.errors import StorageError
from storage.objectstore import refused_credentials_hint

# statistics kept per file (only columns that prune: partitions, event time)
_STATS_COLUMNS = ("period", "date", "interval_start", "hour_start")
FILES_METADATA_KEY = "gpuledger.files"  # commitInfo: per added file, its SHA-256 and rows
SHA256_STAT = "gpuledger_sha256"  # in each add's stats (kept verbatim by checkpoints): storage.deltalog


class CommitConflict(StorageError):
    """Another writer committed something this commit conflicts with (e.g. the same ``txn``
    app id: the Kafka partition moved to another consumer). Re-read and try again."""


@dataclass(frozen=True, slots=True)
class NewFile:
    """A file already written under the table's directory, to be added by a commit."""

    path: str  # relative to the table root, POSIX
    size_bytes: int
    rows: int
    sha256: str
    stats: Mapping[str, tuple[object, object]]  # column → (min, max)


class DeltaDataset:
    """One Delta table at ``uri`` (a local path or ``s3://…``)."""

    def __init__(self, uri: str, schema: pa.Schema, storage_options: Mapping[str, str] | None = None):
        self.uri = uri
        self.schema = schema
        self._options = dict(storage_options or {})
        self._table: DeltaTable | None = None
        # the add actions (and sorted paths) of one version: a version never changes, so the
        # table is built once per version, not on every listing (hourly jobs list many times)
        self._actions: tuple[int, pa.Table, list[str]] | None = None

    # -- reading the log ------------------------------------------------------------------
    def table(self, *, refresh: bool = True) -> DeltaTable | None:
        """The table at its newest version (``None`` while it does not exist yet)."""
        try:
            if self._table is None:
                self._table = DeltaTable(self.uri, storage_options=self._options or None)
            elif refresh:
                self._table.update_incremental()
        except TableNotFoundError:
            return None
        except (DeltaError, OSError) as exc:
            raise StorageError(
                f"cannot read the Delta log of {self.uri}: {_why(exc)} (a damaged _delta_log entry: restore "
                "the table's _delta_log from a backup)"
            ) from exc
        return self._table

    def version(self) -> int:
        table = self.table()
        return -1 if table is None else table.version()

    def files(self) -> list[str]:
        """Paths (relative to the table root) of the files of the newest version."""
        table = self.table()
        if table is None:
            return []
        return list(self._add_actions(table)[1])

    def file_sizes(self) -> dict[str, int]:
        """Live files of the newest version → their size in bytes, from the log (nothing opened)."""
        table = self.table()
        if table is None:
            return {}
        actions = self._add_actions(table)[0]
        return dict(zip((str(p) for p in actions.column("path").to_pylist()),
                        actions.column("size_bytes").to_pylist(), strict=True))

    def file_ranges(self, column: str) -> dict[str, tuple[int | None, object, object]]:
        """Live files → (rows, min, max of ``column``) from the log's statistics (``None`` where
        a file has none); nothing is opened."""
        table = self.table()
        if table is None:
            return {}
        actions = self._add_actions(table)[0]
        paths = [str(p) for p in actions.column("path").to_pylist()]
        rows = actions.column("num_records").to_pylist()
        if f"min.{column}" not in actions.column_names:
            return {p: (r, None, None) for p, r in zip(paths, rows, strict=True)}
        mins = actions.column(f"min.{column}").to_pylist()
        maxs = actions.column(f"max.{column}").to_pylist()
        return {p: (r, a, b) for p, r, a, b in zip(paths, rows, mins, maxs, strict=True)}

    def _add_actions(self, table: DeltaTable) -> tuple[pa.Table, list[str]]:
        """The add actions of ``table``'s version and their sorted paths, built once per version."""
        version = table.version()
        if self._actions is None or self._actions[0] != version:
            actions = pa.table(table.get_add_actions(flatten=True))
            self._actions = (version, actions, sorted(str(p) for p in actions.column("path").to_pylist()))
        return self._actions[1], self._actions[2]

    def files_overlapping(self, column: str, lo: object, hi: object) -> list[str]:
        """Live files whose ``column`` statistics may hold a value in ``[lo, hi)`` (a file
        without statistics is kept): pruning by the log, no file is opened."""
        table = self.table()
        if table is None:
            return []
        return _overlapping(self._add_actions(table)[0], column, lo, hi)

    def transaction_version(self, app_id: str) -> int | None:
        """The version last committed for ``app_id`` (for a Kafka partition: its last offset).

        Writers ask this before a commit, so the table is created if missing: the answer must
        come from a real snapshot, the one the commit is then checked against."""
        table = self.table()
        if table is None:
            self.create_if_missing()
            table = self.table()
            assert table is not None
        return table.transaction_version(app_id)

    # -- committing -----------------------------------------------------------------------
    def create_if_missing(self) -> None:
        if self.table(refresh=False) is not None:
            return
        try:
            DeltaTable.create(
                self.uri, schema=self.schema, mode="ignore", storage_options=self._options or None
            )
        except (DeltaError, OSError) as exc:
            raise StorageError(f"cannot create the Delta table {self.uri}: {_why(exc)}") from exc
        self._table = None

    def commit(
        self,
        adds: Sequence[NewFile],
        *,
        removes: Iterable[str] = (),
        txns: Mapping[str, int] | None = None,
        data_change: bool = True,
        max_retries: int = 20,
        metadata: Mapping[str, str] | None = None,
    ) -> int:
        """Make ``adds`` visible and ``removes`` invisible in one commit; returns its version.

        ``txns`` (app id → version) are stored in the same commit, ``metadata`` in its
        ``commitInfo`` (the lease's holder and expiry: :mod:`storage.lease`). Raises
        :class:`CommitConflict` when a concurrent commit conflicts (same app id, or a removed
        file already removed by someone else); nothing of this commit is then visible.
        """
        removes = list(removes)
        if not adds and not removes and not txns:
            return self.version()
        self.create_if_missing()
        # the snapshot the caller read (txn versions, files) is the one the commit is checked
        # against: refreshing here would hide a concurrent commit of the same app id
        table = self.table(refresh=False)
        assert table is not None
        try:
            _commit(table, self.uri, self.schema, adds, removes, txns, data_change, max_retries, metadata)
        except StorageError:
            self._table = None
            raise
        return self.version()

    def pinned(self) -> PinnedTable:
        """A snapshot of this table at its newest version that only its holder moves (see
        :class:`PinnedTable`); the table is created if missing."""
        self.create_if_missing()
        return PinnedTable(self)

    def files_and_version(self) -> tuple[list[str], int]:
        """The files and the version of one snapshot (a close pins both at once)."""
        table = self.table()
        if table is None:
            return [], -1
        return list(self._add_actions(table)[1]), table.version()

    def files_at(self, version: int) -> list[str]:
        """Paths (relative to the table root) of the files of an earlier ``version``."""
        try:
            table = DeltaTable(self.uri, version=version, storage_options=self._options or None)
        except (DeltaError, OSError) as exc:
            raise StorageError(f"cannot read version {version} of {self.uri}: {_why(exc)}") from exc
        actions = table.get_add_actions(flatten=True)
        return sorted(str(p) for p in actions.column("path").to_pylist())

    def vacuum_candidates(self, retention_hours: int) -> list[str]:
        """What :meth:`vacuum` would delete (paths relative to the table), deleting nothing."""
        table = self.table()
        if table is None:
            return []
        return sorted(
            table.vacuum(retention_hours=retention_hours, enforce_retention_duration=False, dry_run=True)
        )

    def vacuum(self, retention_hours: int) -> list[str]:
        """Delete files no version younger than ``retention_hours`` still lists."""
        table = self.table()
        if table is None:
            return []
        return list(
            table.vacuum(retention_hours=retention_hours, enforce_retention_duration=False, dry_run=False)
        )


class PinnedTable:
    """One version of one table, held for one unit of work (a consumer's batch).

    Reads (:meth:`transaction_version`, :meth:`files_overlapping`) answer for :attr:`version`
    only, and :meth:`commit` is checked by delta-rs against that same version: a commit of the
    same app id made by anyone after it (another member's, for a partition that moved) makes
    this commit fail with :class:`CommitConflict`, however much the table moved meanwhile.
    Nothing but :meth:`advance`, called by the holder between units of work, moves it; no other
    object shares its ``DeltaTable`` (the dataset's own snapshot is refreshed by every read).

    Cost: :meth:`advance` reads only the log entries written since the last unit of work (one
    listing of ``_delta_log`` and one small JSON object per new commit); the first one reads the
    log from its newest checkpoint, as opening the table does.
    """

    def __init__(self, dataset: DeltaDataset):
        self._dataset = dataset
        self._table: DeltaTable | None = None
        self._spent = False

    @property
    def uri(self) -> str:
        return self._dataset.uri

    def advance(self) -> int:
        """Move to the newest version (only between units of work); returns it."""
        try:
            if self._table is None:
                self._table = DeltaTable(self._dataset.uri, storage_options=self._dataset._options or None)
            else:
                self._table.update_incremental()
        except (DeltaError, OSError) as exc:
            self._table = None
            raise StorageError(
                f"cannot read the Delta log of {self._dataset.uri}: {_why(exc)} (a damaged _delta_log entry: "
                "restore the table's _delta_log from a backup)"
            ) from exc
        self._spent = False
        return self._table.version()

    def _pinned(self) -> DeltaTable:
        if self._table is None:
            self.advance()
        assert self._table is not None
        return self._table

    @property
    def version(self) -> int:
        return self._pinned().version()

    def transaction_version(self, app_id: str) -> int | None:
        """What the pinned version records for ``app_id`` (a partition's last stored offset)."""
        return self._pinned().transaction_version(app_id)

    def files_overlapping(self, column: str, lo: object, hi: object) -> list[str]:
        """As :meth:`DeltaDataset.files_overlapping`, at the pinned version."""
        return _files_overlapping(self._pinned(), column, lo, hi)

    def commit(
        self,
        adds: Sequence[NewFile],
        *,
        txns: Mapping[str, int] | None = None,
        metadata: Mapping[str, str] | None = None,
        max_retries: int = 20,
    ) -> None:
        """One commit checked against the pinned version (one per unit of work: the next
        needs :meth:`advance`, so no commit is ever checked against a version it did not read).
        On :class:`CommitConflict` the pin is dropped and the next :meth:`advance` re-reads."""
        if self._spent:
            raise StorageError(f"one commit per pinned version of {self._dataset.uri}: advance first")
        if not adds and not txns:
            return
        table = self._pinned()
        self._spent = True
        try:
            _commit(table, self._dataset.uri, self._dataset.schema, adds, (), txns, True, max_retries, metadata)
        except StorageError:
            self._table = None
            raise


def _files_overlapping(table: DeltaTable, column: str, lo: object, hi: object) -> list[str]:
    return _overlapping(pa.table(table.get_add_actions(flatten=True)), column, lo, hi)


def _overlapping(actions: pa.Table, column: str, lo: object, hi: object) -> list[str]:
    """The files whose logged ``column`` range touches ``[lo, hi)``; a file without
    statistics is always included (never skipped on a guess)."""
    paths = actions.column("path").to_pylist()
    if f"min.{column}" not in actions.column_names:
        return sorted(paths)
    mins = actions.column(f"min.{column}").to_pylist()
    maxs = actions.column(f"max.{column}").to_pylist()
    return sorted(
        p for p, a, b in zip(paths, mins, maxs, strict=True)
        if a is None or b is None or (a < hi and b >= lo)
    )


def _commit(
    table: DeltaTable,
    uri: str,
    schema: pa.Schema,
    adds: Sequence[NewFile],
    removes: Sequence[str],
    txns: Mapping[str, int] | None,
    data_change: bool,
    max_retries: int,
    metadata: Mapping[str, str] | None,
) -> None:
    """One Delta commit built on ``table``'s snapshot (the version its conflicts are checked from)."""
    now_ms = int(time.time() * 1000)
    actions: list[AddAction | RemoveAction] = [
        AddAction(f.path, f.size_bytes, {}, now_ms, data_change, _stats_json(f))
        for f in adds
    ]
    actions.extend(
        RemoveAction(path=p, data_change=data_change, deletion_timestamp=now_ms)
        for p in removes
    )
    meta = {FILES_METADATA_KEY: json.dumps({f.path: {"sha256": f.sha256, "rows": f.rows} for f in adds})}
    meta.update(metadata or {})
    props = CommitProperties(
        custom_metadata=meta,
        max_commit_retries=max_retries,
        app_transactions=[Transaction(app, int(v)) for app, v in sorted((txns or {}).items())] or None,
    )
    try:
        table.create_write_transaction(actions, "append", schema, commit_properties=props)
    except CommitFailedError as exc:
        raise CommitConflict(f"commit to {uri} conflicted with another writer: {brief(exc)}") from exc
    except (DeltaError, OSError) as exc:
        raise StorageError(f"cannot commit to {uri}: {_why(exc)}") from exc


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def brief(exc: BaseException) -> str:
    """A vendor error's first line, without colour codes or a Rust backtrace."""
    text = _ANSI.sub("", str(exc)).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _why(exc: BaseException) -> str:
    return brief(exc) + refused_credentials_hint(str(exc))


def _stats_json(f: NewFile) -> str:
    mins = {c: _json_value(v[0]) for c, v in f.stats.items() if c in _STATS_COLUMNS and v[0] is not None}
    maxs = {c: _json_value(v[1]) for c, v in f.stats.items() if c in _STATS_COLUMNS and v[1] is not None}
    return json.dumps({"numRecords": f.rows, "minValues": mins, "maxValues": maxs, SHA256_STAT: f.sha256})


def _json_value(value: object) -> object:
    if hasattr(value, "isoformat"):
        text = value.isoformat()  # type: ignore[union-attr]
        return text.replace("+00:00", "Z") if "+" in text else text
    return value
