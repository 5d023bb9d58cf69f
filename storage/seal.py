"""Sealing a closed month: ``<root>/manifests/YYYY-MM.json``, and reading seals back, failing closed.

A manifest records, for every file the period rests on (its ledgers, its ``usage_hourly`` and
``quarantine`` files, the copy of the registry it was priced with), the path relative to the
root, SHA-256, byte size, row count and Arrow schema; the period's totals as decimal strings;
``registry_sha256``, the SHA-256 of the canonical form of the registry it was priced with;
``reads``, the Delta version of ``raw``, ``usage_hourly`` and ``quarantine`` the close read, with
the month's ``raw`` files at that version and the SHA-256 recorded at their commit; ``previous``,
the SHA-256 of the bytes of the manifest sealed before it (the chain); ``content_sha256``, the
SHA-256 of what was sealed (files, totals, registry: everything but ``reads``, ``previous`` and
``sealed_at``); and ``manifest_sha256``, the SHA-256 of the canonical JSON of every other key.

``content_sha256`` depends only on the events and the registry: the same events give it,
whatever the bus, the batch sizes or the number of consumers (the Delta versions in ``reads``
count commits, which depend on all three). Statement numbers derive from it.

The bytes are deterministic (sorted keys, sorted files, no wall-clock time unless the caller
passes ``sealed_at``): the same inputs seal to the same bytes (invariant 3). A sealed period is
never rewritten: sealing it again with other content raises :class:`IntegrityError`, as does
sealing a period older than one already sealed (it would break the chain).

Fail closed (STYLE 18): :func:`read_manifest` and :func:`sealed_files` raise
:class:`SealUnreadable` naming a manifest that cannot be parsed or whose ``manifest_sha256``
does not match; roll-up, compaction, vacuum and the close all start from them, so none of them
touches what an unreadable seal may cover.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from storage.dataset import Store
from storage.errors import IntegrityError, StorageError
from storage.keys import SIGNATURE_SUFFIX, load_private_key
from storage.location import create_new, root_of, write_atomic

MANIFEST_DIR = "manifests"
MANIFEST_FORMAT = "gpuledger-manifest/1"
_PERIOD = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")
_PERIOD_DIR = re.compile(r"(?:^|/)period=(\d{4}-\d{2})(?:/|$)")
_CHUNK_BYTES = 8 * 1024 * 1024
# Datasets a close reads (late data may land in a sealed partition of these and wait for the
# next close) as opposed to the ledgers a close writes (an unsealed file there is a forgery).
INPUT_DATASETS = ("raw", "usage_hourly", "quarantine")
LEDGER_DIRS = ("ledgers/billing", "ledgers/compliance")
# keys left out of content_sha256: where the close read from, and the chain
_NOT_CONTENT = ("reads", "previous", "sealed_at", "manifest_sha256", "content_sha256")


class SealUnreadable(IntegrityError):
    """A manifest that cannot be read or does not match its own hash: nothing it may seal is
    touched until it is restored."""


@dataclass(frozen=True, slots=True)
class SealedFile:
    path: str  # relative to the store root, POSIX separators
    sha256: str
    size_bytes: int
    rows: int | None  # None for a file that is not Parquet
    schema: str | None
    schema_sha256: str | None

    def as_json(self) -> dict[str, object]:
        return {
            "path": self.path,
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "rows": self.rows,
            "schema": self.schema,
            "schema_sha256": self.schema_sha256,
        }


# -- paths ----------------------------------------------------------------------------------
def manifest_path(store: Store, period: str) -> str:
    return store.path(MANIFEST_DIR, f"{period}.json")


def sealed_periods(store: Store) -> list[str]:
    """Periods that have a manifest, oldest first."""
    base = store.path(MANIFEST_DIR)
    if not store.exists(base):
        return []
    names = [
        posixpath.basename(info.path)
        for info in fs_of(store).get_file_info(pafs.FileSelector(base))
        if info.type == pafs.FileType.File
    ]
    return sorted(n[: -len(".json")] for n in names if n.endswith(".json") and _PERIOD.match(n[:-5]))


def relative_path(store: Store, path: str) -> str:
    """``path`` relative to the store root; accepts a path already relative to it."""
    root = store.root.rstrip("/") + "/"
    posix = path.replace(os.sep, "/")
    if posix.startswith(root):
        return posix[len(root) :]
    if posixpath.isabs(posix):
        raise StorageError(f"{path} is outside the store root {store.root}")
    return posixpath.normpath(posix)


# -- reading seals, failing closed ----------------------------------------------------------
def parse_manifest(data: bytes, period: str) -> dict | str:
    """The manifest's document, or a sentence saying why it is not one."""
    try:
        doc = json.loads(data)
    except ValueError as exc:
        return f"not JSON: {exc}"
    if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT:
        return f"not a {MANIFEST_FORMAT} manifest"
    if doc.get("period") != period:
        return f"manifest names period {doc.get('period')!r}, file name says {period}"
    files = doc.get("files")
    if not isinstance(files, list) or not all(isinstance(f, dict) and "path" in f for f in files):
        return "manifest has no readable file list"
    return doc


def self_hash_ok(doc: Mapping[str, object]) -> bool:
    body = {k: v for k, v in doc.items() if k != "manifest_sha256"}
    return doc.get("manifest_sha256") == body_hash(body)


def read_manifest(store: Store, period: str) -> dict:
    """The manifest of ``period``; :class:`SealUnreadable` (one line naming it) if it cannot be
    parsed or its ``manifest_sha256`` does not match its content."""
    path = manifest_path(store, period)
    shown = f"{store.display_root.rstrip('/')}/{MANIFEST_DIR}/{period}.json"
    try:
        data = store.read_bytes(path)
    except OSError as exc:
        raise SealUnreadable(f"{shown} cannot be read ({exc}); {_NEXT_STEP}") from exc
    doc = parse_manifest(data, period)
    if isinstance(doc, str):
        raise SealUnreadable(f"{shown} is unreadable ({doc}); {_NEXT_STEP}")
    if not self_hash_ok(doc):
        raise SealUnreadable(f"{shown} does not match its manifest_sha256 (altered); {_NEXT_STEP}")
    return doc


_NEXT_STEP = (
    "roll-up, compaction, vacuum and close stop until it is restored from a backup "
    "(then run `gpuledger verify --all`)"
)


def sealed_files(store: Store, periods: Iterable[str] | None = None) -> dict[str, str]:
    """Every file a manifest seals or lists as read (path relative to the root) → its period.

    ``periods`` bounds the reading to what a job touches (the hourly jobs pass the periods of
    the partitions they are about to replace or delete files in): only those periods'
    manifests are read, plus the newest one (the head of the chain the next close builds on,
    so a damaged head stops the upkeep within the hour, not at the month's end). A close of
    period P seals only files under ``*/period=P/`` (:func:`seal_period` refuses others), so a
    file of a period outside ``periods`` can never be in the other manifests: the set is exact
    for every file of ``periods``, and the cost follows the period, not the history. ``None``
    reads every manifest (verify, the close).

    Fails closed: an unreadable or altered manifest it reads raises :class:`SealUnreadable`, so
    no caller treats the files it may seal as free to replace or delete.
    """
    listed = sealed_periods(store)
    if periods is not None:
        wanted = set(periods)
        listed = [p for p in listed if p in wanted or p == listed[-1]]
    out: dict[str, str] = {}
    for period in listed:
        doc = read_manifest(store, period)
        for entry in doc["files"]:
            out[entry["path"]] = period
        for entry in read_files(doc):
            out[entry["path"]] = period
    return out


def periods_of(paths: Iterable[str]) -> set[str] | None:
    """The ``period=…`` of each path (relative to the root or a table); ``None`` if a path has
    none (then no manifest can be ruled out and callers read them all)."""
    out: set[str] = set()
    for path in paths:
        match = _PERIOD_DIR.search(path)
        if match is None:
            return None
        out.add(match[1])
    return out


def read_files(doc: Mapping[str, object]) -> list[dict]:
    """The input files a manifest lists under ``reads`` (the month's ``raw`` files)."""
    reads = doc.get("reads") or {}
    out: list[dict] = []
    if isinstance(reads, dict):
        for table in sorted(reads):
            entry = reads[table]
            if isinstance(entry, dict):
                out.extend(f for f in entry.get("files", []) if isinstance(f, dict) and "path" in f)
    return out


def content_sha256(doc: Mapping[str, object]) -> str:
    """The SHA-256 of what a manifest seals (files, totals, registry), not where it was read."""
    return body_hash({k: v for k, v in doc.items() if k not in _NOT_CONTENT})


# -- sealing --------------------------------------------------------------------------------
def seal_period(
    store: Store,
    period: str,
    files: Sequence[str],
    totals: Mapping[str, str],
    signing_key: Path | None = None,
    *,
    sealed_at: datetime | None = None,
    reads: Mapping[str, Mapping[str, object]] | None = None,
    registry_sha256: str | None = None,
    fence: Fence | None = None,
) -> str:
    """Write the manifest of ``period`` (and its signature); return the SHA-256 of its bytes.

    ``files`` are paths under the store (absolute or relative to the root); ``totals`` maps a
    name (e.g. ``amount_krw.gov``) to a decimal string. ``reads`` maps an input table to
    ``{"version": N, "files": [{"path", "sha256", "rows"}]}`` (what the close read);
    ``registry_sha256`` is the canonical registry's hash (its copy is one of ``files``).
    Sealing again with the same inputs rewrites nothing and returns the same hash.

    **Fenced** (issue 15): ``fence`` (the close's :meth:`storage.lease.Lease.check`) is called
    immediately before the manifest and its signature are written, and the manifest is created
    with a create-if-absent (:func:`write_once`): a close that lost its lease writes nothing,
    and no second close can ever replace a sealed month's manifest, even one that stalled
    between its fence and its write.

    Raises :class:`IntegrityError` if the period is sealed already with other content, or a
    later period is sealed already; :class:`StorageError` for a bad period, file or total.
    """
    if not _PERIOD.match(period):
        raise StorageError(f"bad period {period!r}: expected YYYY-MM")
    bad_totals = [k for k, v in totals.items() if not _is_decimal(v)]
    if bad_totals:
        raise StorageError(f"totals are not decimal strings: {', '.join(sorted(bad_totals))}")
    periods = sealed_periods(store)
    later = [p for p in periods if p > period]
    if later:
        raise IntegrityError(f"cannot seal {period}: later period {later[0]} is sealed already")

    rel_paths = sorted({relative_path(store, f) for f in files})
    read_paths = [f["path"] for entry in (reads or {}).values() for f in entry.get("files", [])]  # type: ignore[union-attr]
    foreign = [
        p for p in [*rel_paths, *read_paths]
        if p.split("/", 1)[0] in INPUT_DATASETS and periods_of([p]) != {period}
    ]
    if foreign:  # sealed_files(periods=…) relies on it: a period's table files are sealed by its own manifest only
        raise StorageError(f"cannot seal {period}: table files of another period {', '.join(sorted(foreign)[:3])}")
    missing = [p for p in rel_paths if not store.exists(store.path(p))]
    if missing:
        raise StorageError(f"cannot seal {period}: missing files {', '.join(missing)}")
    entries = [describe_file(store, p) for p in rel_paths]

    earlier = [p for p in periods if p < period]
    previous = None
    if earlier:
        read_manifest(store, earlier[-1])  # never chain onto a seal that does not verify
        previous_bytes = store.read_bytes(manifest_path(store, earlier[-1]))
        previous = {"period": earlier[-1], "sha256": hashlib.sha256(previous_bytes).hexdigest()}

    body: dict[str, object] = {
        "format": MANIFEST_FORMAT,
        "period": period,
        "files": [e.as_json() for e in entries],
        "totals": {k: str(totals[k]) for k in sorted(totals)},
        "previous": previous,
    }
    if registry_sha256 is not None:
        body["registry_sha256"] = registry_sha256
    if reads is not None:
        body["reads"] = {
            table: {**dict(entry), "files": sorted(entry.get("files", []), key=lambda f: f["path"])}
            for table, entry in sorted(reads.items())
        }
    if sealed_at is not None:
        if sealed_at.tzinfo is None:
            raise StorageError("sealed_at must carry a timezone")
        body["sealed_at"] = sealed_at.isoformat()
    body["content_sha256"] = content_sha256(body)
    body["manifest_sha256"] = body_hash(body)
    data = canonical(body)

    target = manifest_path(store, period)
    if not write_once(store, target, data, fence=fence) and store.read_bytes(target) != data:
        raise IntegrityError(
            f"{period} is sealed already with different content; a closed period is never"
            " rewritten (late usage becomes corrections in the next close)"
        )
    if signing_key is not None:
        if fence is not None:
            fence()
        store.write_bytes_atomic(target + SIGNATURE_SUFFIX, load_private_key(signing_key).sign(data))
    return hashlib.sha256(data).hexdigest()


# -- fenced writes of what a seal covers ----------------------------------------------------
Fence = Callable[[], None]  # raises (storage.lease.LeaseLost) when the writer may no longer write


def write_once(store: Store, path: str, data: bytes, *, fence: Fence | None = None) -> bool:
    """Create ``path`` with ``data`` unless it exists, right after ``fence()``; ``True`` when
    this call created it. A create-if-absent (``O_EXCL`` link locally; on S3 a check, a PUT
    and the caller's read-back, :func:`storage.location.create_new`): of two writers, the
    second never replaces the first's bytes."""
    if fence is not None:
        fence()
    root, options = root_of(store)
    return create_new(root.join(relative_path(store, path)), data, options)


def write_sealable(store: Store, period: str, path: str, data: bytes, *, fence: Fence | None = None,
                   once: bool = False) -> None:
    """Write a file ``period``'s seal will cover (a ledger, the registry copy), fenced.

    Created if absent (:func:`write_once`). A file already there with the same bytes is left;
    with other bytes it is the leftover of a close that stopped before sealing and is replaced
    (still under the lease: ``fence`` was just called) unless ``once`` (the billing ledger, the
    closed marker: it was absent when this close began, so another close wrote it meanwhile) or
    the period is sealed: then :class:`IntegrityError`, and nothing is written.
    """
    if write_once(store, path, data, fence=fence):
        return
    if store.read_bytes(path) == data:
        return
    shown = f"{store.display_root.rstrip('/')}/{relative_path(store, path)}"
    if once or store.exists(manifest_path(store, period)):
        raise IntegrityError(
            f"{shown} was written meanwhile by another close of {period}; this close stops without writing it "
            "(run `gpuledger verify --all`, then `gpuledger close` again if the month is not sealed)"
        )
    root, options = root_of(store)
    write_atomic(root.join(relative_path(store, path)), data, options)


def describe_file(store: Store, rel_path: str) -> SealedFile:
    """Hash, size, and (for Parquet) rows and schema of one file, streamed through the Store."""
    full = store.path(rel_path)
    digest = hashlib.sha256()
    size = 0
    with fs_of(store).open_input_stream(full) as handle:
        while chunk := handle.read(_CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    rows = schema_text = schema_hash = None
    if rel_path.endswith(".parquet"):
        try:
            with fs_of(store).open_input_file(full) as handle:
                parquet = pq.ParquetFile(handle)
                rows = parquet.metadata.num_rows
                schema_text = parquet.schema_arrow.remove_metadata().to_string(
                    show_field_metadata=False, show_schema_metadata=False
                )
        except Exception:  # noqa: BLE001 - a corrupt file has no rows/schema; the hash says why
            rows = schema_text = None
        if schema_text is not None:
            schema_hash = hashlib.sha256(schema_text.encode()).hexdigest()
    return SealedFile(rel_path, digest.hexdigest(), size, rows, schema_text, schema_hash)


# -- ledger partitions ----------------------------------------------------------------------
def ledger_partitions(store: Store) -> list[tuple[str, str]]:
    """(period, ledger partition dir relative to the root) of every ledger partition with files."""
    out = []
    for ledger in LEDGER_DIRS:
        base = store.path(ledger)
        if not store.exists(base):
            continue
        for info in fs_of(store).get_file_info(pafs.FileSelector(base)):
            name = posixpath.basename(info.path)
            if info.type == pafs.FileType.Directory and name.startswith("period="):
                if parquet_in(store, f"{ledger}/{name}"):
                    out.append((name[len("period=") :], f"{ledger}/{name}"))
    return sorted(out)


def ledger_periods(store: Store) -> list[str]:
    """Periods that have ledger files (sealed or not), oldest first."""
    return sorted({period for period, _ in ledger_partitions(store)})


def parquet_in(store: Store, rel_dir: str) -> list[str]:
    base = store.path(rel_dir)
    if not store.exists(base):
        return []
    return sorted(
        relative_path(store, info.path)
        for info in fs_of(store).get_file_info(pafs.FileSelector(base))
        if info.type == pafs.FileType.File
        and info.path.endswith(".parquet")
        and not posixpath.basename(info.path).startswith((".", "_"))
    )


# -- helpers --------------------------------------------------------------------------------
def canonical(doc: Mapping[str, object]) -> bytes:
    return (json.dumps(doc, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode()


def body_hash(body: Mapping[str, object]) -> str:
    compact = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(compact.encode()).hexdigest()


def _is_decimal(value: object) -> bool:
    if isinstance(value, Decimal):
        return value.is_finite()
    if not isinstance(value, str):
        return False
    try:
        return Decimal(value).is_finite()
    except InvalidOperation:
        return False


def fs_of(store: Store) -> pafs.FileSystem:
    """The Store's filesystem: seals live in the storage room and stream large files."""
    return store._fs  # noqa: SLF001 - same package
