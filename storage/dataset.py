"""Parquet datasets with declared schemas: Delta tables for shared data, atomic files for ledgers.

Layout under a root (a local directory, the embedded default, or ``s3://bucket/prefix`` on any
S3-compatible object store)::

    <root>/raw/            Delta table: period=YYYY-MM/date=YYYY-MM-DD/part-<id>.parquet + _delta_log/
    <root>/quarantine/     Delta table: period=YYYY-MM/part-<id>.parquet + _delta_log/
    <root>/usage_hourly/   Delta table: period=YYYY-MM/date=YYYY-MM-DD/part-<id>.parquet + _delta_log/
    <root>/ledgers/…, <root>/manifests/…   single files, each written atomically

The three stream datasets are Delta Lake tables (:mod:`storage.delta`): a batch's files are
written first, then made visible by one Delta commit, which may also carry application
transactions (the consumer's Kafka offsets, :meth:`Store.commit_files`). A reader lists a
table's files from its log, so it never sees a file of an uncommitted batch, a file a
compaction replaced, or half a batch. A commit is a conditional put of the next log entry, so
it is atomic with any number of writers on any number of machines (no rename, no lock).

Ledgers and manifests are written once per period by the close (one writer): each is a single
object written whole (temp file + rename on a local disk; one PUT on S3, which is atomic).

File names derive from content, so a retried batch rewrites the same name with the same bytes
instead of adding a second copy.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from storage.delta import CommitConflict, DeltaDataset, NewFile, brief
from storage.errors import StorageError
from storage.objectstore import S3Location, parse_s3_root, refused_credentials_hint
from storage.schemas import TABLES

__all__ = ["CommitConflict", "NewFile", "Store", "partition_dir", "to_table"]

PARQUET_COMPRESSION = "zstd"
# columns where nearly every value differs: a dictionary page only costs time (~12 % of a
# raw-file write) and saves no bytes
_NO_DICTIONARY = frozenset(
    {"event_id", "quarantine_id", "gpu_seconds", "busy_gpu_seconds", "gpu_microseconds",
     "busy_gpu_microseconds", "energy_joules", "raw", "reason"}
)
_STATS_COLUMNS = ("period", "date", "interval_start", "hour_start")
# Row order within a file, per table (bench/bench_raw_bytes.py): raw rows of one device sit
# together, so its repeated values (uuids, model, owner, fraction, flags) run-length encode and
# its intervals delta-encode: 45-49 -> 37 bytes per event at the national shape. The order is
# a pure function of the rows (device, interval and node name one event), so a retried
# batch still writes the same bytes. What is left is the content: the 128-bit event id and
# the measured floats (docs/BENCHMARKS.md, "Raw bytes per event").
_ROW_ORDER = {"raw": [("device_uuid", "ascending"), ("interval_start", "ascending"), ("node", "ascending")]}


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
    """A root holding datasets; every write and read of Parquet goes through here.

    ``root`` is a local directory or ``s3://bucket/prefix``; for S3, ``s3_options`` (endpoint,
    region, credentials) come from the caller's settings, else from the standard ``AWS_*``
    environment variables (:mod:`storage.objectstore`).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        filesystem: pafs.FileSystem | None = None,
        *,
        s3_options: Mapping[str, str] | None = None,
    ):
        self.location: S3Location | None = None
        text = os.fspath(root)
        if text.startswith("s3:/") and not text.startswith("s3://"):
            text = "s3://" + text[len("s3:/") :]  # a Path() made of s3://bucket/prefix
        if filesystem is None and text.startswith("s3://"):
            self.location = parse_s3_root(text, s3_options)
            self._fs = self.location.filesystem()
            self.root = self.location.fs_root
        else:
            self._fs = filesystem or pafs.LocalFileSystem()
            self.root = str(Path(text).absolute()) if filesystem is None else text
        try:
            self._fs.create_dir(self.root, recursive=True)
        except OSError as exc:
            raise StorageError(
                f"cannot open the data directory {self.display_root}: {brief(exc)}{refused_credentials_hint(str(exc))}"
            ) from exc
        self._tables: dict[str, DeltaDataset] = {}
        self._pinned: dict[str, list[str]] = {}
        self._pinned_versions: dict[str, int] = {}

    @property
    def display_root(self) -> str:
        return self.location.url if self.location is not None else self.root

    # -- paths -----------------------------------------------------------------------------
    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def uri(self, *parts: str) -> str:
        """A path as an URI other libraries open (``s3://…`` on object storage)."""
        if self.location is not None:
            return "s3://" + posixpath.join(self.root, *parts)
        return self.path(*parts)

    def polars_storage_options(self) -> dict[str, str] | None:
        return self.location.polars_options() if self.location is not None else None

    # -- Delta tables ----------------------------------------------------------------------
    def table(self, dataset: str) -> DeltaDataset:
        """The Delta table of ``raw``, ``quarantine`` or ``usage_hourly``."""
        if dataset not in TABLES:
            raise StorageError(f"{dataset!r} is not a table; tables are {', '.join(TABLES)}")
        found = self._tables.get(dataset)
        if found is None:
            options = self.location.delta_options() if self.location is not None else None
            found = DeltaDataset(self.uri(dataset), TABLES[dataset][0], options)
            self._tables[dataset] = found
        return found

    @contextlib.contextmanager
    def snapshot(self, *datasets: str):
        """Inside the block, every :meth:`files` of these tables lists the version current at
        its start: a reader (the close) sees one state while writers keep committing."""
        previous, previous_versions = dict(self._pinned), dict(self._pinned_versions)
        try:
            for name in datasets:
                if name not in self._pinned:
                    self._pinned[name], self._pinned_versions[name] = self.table(name).files_and_version()
            yield self
        finally:
            self._pinned, self._pinned_versions = previous, previous_versions

    def pinned_version(self, dataset: str) -> int:
        """The Delta version :meth:`snapshot` pinned for ``dataset`` (what a close seals as read)."""
        if dataset not in self._pinned_versions:
            raise StorageError(f"{dataset} is not pinned: read it inside Store.snapshot")
        return self._pinned_versions[dataset]

    def txn_version(self, dataset: str, app_id: str) -> int | None:
        return self.table(dataset).transaction_version(app_id)

    def files(self, dataset: str) -> list[str]:
        """Committed Parquet files of a dataset, sorted (deterministic order).

        ``dataset`` may carry a partition prefix (``usage_hourly/period=2026-11``): only files
        under it are returned, from the table's log for a table (no directory walk), from a
        listing of that directory alone otherwise.
        """
        name, _, prefix = dataset.strip("/").partition("/")
        if name in TABLES:
            wanted = prefix.rstrip("/") + "/" if prefix else ""
            listed = self._pinned[name] if name in self._pinned else self.table(name).files()
            return [self.path(name, p) for p in listed if p.startswith(wanted)]
        return self._list_parquet(self.path(dataset))

    def files_overlapping(self, dataset: str, column: str, lo: object, hi: object) -> list[str]:
        """Files of table ``dataset`` whose statistics for ``column`` may fall in ``[lo, hi)``."""
        return [self.path(dataset, p) for p in self.table(dataset).files_overlapping(column, lo, hi)]

    def _list_parquet(self, base: str) -> list[str]:
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
            and "/_delta_log/" not in f.path
        ]
        return sorted(found)

    # -- reads -----------------------------------------------------------------------------
    def scan_files(self, files: Sequence[str], schema: pa.Schema) -> pl.LazyFrame:
        """A lazy frame over the given files (from :meth:`files`); empty frame if none."""
        if not files:
            return pl.LazyFrame(schema=pl.from_arrow(schema.empty_table()).schema)
        if self.location is not None:
            return pl.scan_parquet(
                ["s3://" + f for f in files], hive_partitioning=False,
                storage_options=self.polars_storage_options(),
            )
        return pl.scan_parquet(list(files), hive_partitioning=False)

    def scan(self, dataset: str, schema: pa.Schema) -> pl.LazyFrame:
        """A lazy frame over every committed file of ``dataset`` (empty frame if none).

        Columns come from the files themselves (partition columns are stored in the file),
        so the result has the declared schema without relying on Hive inference.
        """
        return self.scan_files(self.files(dataset), schema)

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
        if self.location is not None:  # one PUT: an object appears whole or not at all
            with self._fs.open_output_stream(path) as out:
                out.write(data)
            return
        parent = posixpath.dirname(path)
        self._fs.create_dir(parent, recursive=True)
        tmp = posixpath.join(parent, f".tmp-{uuid.uuid4().hex}")
        try:
            with self._fs.open_output_stream(tmp) as out:
                out.write(data)
            _fsync_local(self._fs, tmp)
            self._fs.move(tmp, path)
        except BaseException:
            _remove_quietly(self._fs, tmp)
            raise

    def write_parquet_atomic(self, path: str, table: pa.Table) -> None:
        """Write one Parquet file atomically (temp file then rename; one PUT on S3)."""
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression=PARQUET_COMPRESSION)
        self.write_bytes_atomic(path, sink.getvalue().to_pybytes())

    def delete(self, path: str) -> None:
        if self.exists(path):
            self._fs.delete_file(path)

    # -- table writes ----------------------------------------------------------------------
    def write_files(
        self,
        dataset: str,
        frame: pl.DataFrame,
        name: str,
        partition_columns: Sequence[str] | None = None,
    ) -> list[NewFile]:
        """Write ``frame`` into table ``dataset`` as one file per partition; not yet visible.

        Returns what :meth:`commit_files` needs to add them. ``name`` must derive from the
        content, so a retry rewrites the same files instead of new ones.
        """
        if frame.height == 0:
            return []
        if not name or "/" in name:
            raise StorageError(f"bad file name {name!r}")
        schema, declared = TABLES[dataset]
        columns = list(partition_columns or declared)
        out = []
        groups = frame.partition_by(columns, as_dict=True, maintain_order=True)
        for key in sorted(groups):
            rel = posixpath.join(partition_dir(columns, [str(v) for v in key]), f"part-{name}.parquet")
            out.append(self._write_table_file(dataset, rel, to_table(groups[key], schema)))
        return out

    def _write_table_file(self, dataset: str, rel: str, table: pa.Table) -> NewFile:
        if dataset in _ROW_ORDER:
            table = table.sort_by(_ROW_ORDER[dataset])
        sink = pa.BufferOutputStream()
        pq.write_table(
            table, sink, compression=PARQUET_COMPRESSION, use_dictionary=_dictionary_columns(table.schema)
        )
        data = sink.getvalue().to_pybytes()
        self.write_new_file(dataset, rel, data)
        return NewFile(rel, len(data), table.num_rows, hashlib.sha256(data).hexdigest(), _stats(table))

    def write_new_file(self, dataset: str, rel: str, data: bytes) -> None:
        """Write a not-yet-committed file of a table (invisible until a commit lists it)."""
        full = self.path(dataset, rel)
        if self.location is None:
            self._fs.create_dir(posixpath.dirname(full), recursive=True)
        try:
            with self._fs.open_output_stream(full) as out:
                out.write(data)
            _fsync_local(self._fs, full)
        except OSError as exc:
            raise StorageError(f"cannot write {self.uri(dataset, rel)}: {brief(exc)}{refused_credentials_hint(str(exc))}") from exc

    @contextlib.contextmanager
    def open_new_file(self, dataset: str, rel: str):
        """A stream to a not-yet-committed file of a table (for writers that stream row groups)."""
        full = self.path(dataset, rel)
        if self.location is None:
            self._fs.create_dir(posixpath.dirname(full), recursive=True)
        with self._fs.open_output_stream(full) as out:
            yield out
        _fsync_local(self._fs, full)

    def sha256_of(self, path: str) -> tuple[str, int]:
        """(SHA-256, byte size) of a stored file, read in 8 MiB chunks."""
        digest = hashlib.sha256()
        size = 0
        with self._fs.open_input_stream(path) as handle:
            while chunk := handle.read(8 << 20):
                digest.update(chunk)
                size += len(chunk)
        return digest.hexdigest(), size

    def new_file_of(self, dataset: str, rel: str, rows: int, stats: Mapping[str, tuple[object, object]]) -> NewFile:
        """Describe a file written by a streaming writer (size and SHA-256 read back)."""
        sha, size = self.sha256_of(self.path(dataset, rel))
        return NewFile(rel, size, rows, sha, stats)

    def commit_files(
        self,
        dataset: str,
        adds: Sequence[NewFile],
        *,
        removes: Iterable[str] = (),
        txns: Mapping[str, int] | None = None,
        data_change: bool = True,
    ) -> int:
        """One Delta commit: ``adds`` appear, ``removes`` (paths relative to the table) vanish,
        ``txns`` are recorded. Raises :class:`CommitConflict` if another writer got in the way."""
        return self.table(dataset).commit(adds, removes=removes, txns=txns, data_change=data_change)


def _stats(table: pa.Table) -> dict[str, tuple[object, object]]:
    import pyarrow.compute as pc

    out: dict[str, tuple[object, object]] = {}
    for column in _STATS_COLUMNS:
        if column in table.column_names and table.num_rows:
            mm = pc.min_max(table.column(column))
            out[column] = (mm["min"].as_py(), mm["max"].as_py())
    return out


def _remove_quietly(fs: pafs.FileSystem, path: str) -> None:
    try:
        fs.delete_file(path)
    except OSError:
        pass


def _fsync_local(fs: pafs.FileSystem, path: str) -> None:
    """fsync a just-written local file so a power cut cannot leave it empty after rename."""
    if isinstance(fs, pafs.LocalFileSystem):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
