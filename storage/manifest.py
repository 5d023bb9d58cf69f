"""Sealed period manifests: file hashes, row counts, schemas, totals and a hash chain.

A close ends by sealing its period: ``<root>/manifests/YYYY-MM.json`` records, for every file
the period rests on, its path relative to the root, SHA-256, byte size, row count and Arrow
schema (text and SHA-256 fingerprint); the period's totals as decimal strings; ``previous``,
the SHA-256 of the bytes of the manifest of the newest period sealed before this one (``null``
for the first); and ``manifest_sha256``, the SHA-256 of the canonical JSON of every other key
(so an edit of the newest manifest, which no successor points at yet, is caught too).

The bytes are deterministic (sorted keys, sorted files, no wall-clock time unless the caller
passes ``sealed_at``): the same inputs seal to the same bytes and the same hash (docs/architecture.md,
invariant 3). An optional detached Ed25519 signature ``YYYY-MM.json.sig`` (64 raw bytes over
the manifest's bytes, so ``openssl pkeyutl -verify -rawin`` checks it too) proves the operator
who holds the private key sealed it.

:func:`verify` re-hashes every sealed file, re-counts rows, re-walks the chain and checks the
signatures, and names every difference it finds (invariant 5). A sealed period is never
rewritten: sealing it again with different content raises :class:`IntegrityError`, as does
sealing a period older than one already sealed (it would break the chain).

Everything is read and written through :class:`Store` (``pyarrow.fs``), never a bare ``open``;
key files are the operator's, on the local disk, and are the one exception.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from storage.dataset import Store
from storage.errors import IntegrityError, StorageError

MANIFEST_DIR = "manifests"
MANIFEST_FORMAT = "gpuledger-manifest/1"
SIGNATURE_SUFFIX = ".sig"
_PERIOD = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")
_CHUNK_BYTES = 8 * 1024 * 1024
# Datasets a close reads (late data may land in a sealed partition of these and wait for the
# next close) as opposed to the ledgers a close writes (an unsealed file there is a forgery).
INPUT_DATASETS = ("raw", "usage_hourly", "quarantine")


class DifferenceKind(StrEnum):
    FILE_CHANGED = "file_changed"
    FILE_MISSING = "file_missing"
    ROWS_CHANGED = "rows_changed"
    SCHEMA_CHANGED = "schema_changed"
    EXTRA_FILE = "extra_file"
    MANIFEST_UNREADABLE = "manifest_unreadable"
    MANIFEST_ALTERED = "manifest_altered"
    CHAIN_BROKEN = "chain_broken"
    SIGNATURE_MISSING = "signature_missing"
    SIGNATURE_BAD = "signature_bad"
    UNSEALED_PERIOD = "unsealed_period"


@dataclass(frozen=True, slots=True)
class Difference:
    """One thing that does not match what was sealed."""

    kind: DifferenceKind
    period: str
    path: str | None
    detail: str

    def __str__(self) -> str:
        where = f" {self.path}" if self.path else ""
        return f"{self.period}: {self.kind}{where}: {self.detail}"


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """What :func:`verify` checked and every difference it found. ``ok`` iff none."""

    periods: tuple[str, ...]
    files_checked: int
    signatures_checked: int
    differences: tuple[Difference, ...]
    notes: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return not self.differences


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
        for info in _fs(store).get_file_info(pafs.FileSelector(base))
        if info.type == pafs.FileType.File
    ]
    return sorted(n[: -len(".json")] for n in names if n.endswith(".json") and _PERIOD.match(n[:-5]))


def sealed_files(store: Store) -> dict[str, str]:
    """Every file sealed by any manifest (path relative to the root) → the period sealing it."""
    out: dict[str, str] = {}
    for period in sealed_periods(store):
        try:
            doc = json.loads(store.read_bytes(manifest_path(store, period)))
            for entry in doc["files"]:
                out[entry["path"]] = period
        except (ValueError, KeyError, TypeError):
            continue
    return out


def relative_path(store: Store, path: str) -> str:
    """``path`` relative to the store root; accepts a path already relative to it."""
    root = store.root.rstrip("/") + "/"
    posix = path.replace(os.sep, "/")
    if posix.startswith(root):
        return posix[len(root) :]
    if posixpath.isabs(posix):
        raise StorageError(f"{path} is outside the store root {store.root}")
    return posixpath.normpath(posix)


# -- sealing --------------------------------------------------------------------------------
def seal_period(
    store: Store,
    period: str,
    files: Sequence[str],
    totals: Mapping[str, str],
    signing_key: Path | None = None,
    *,
    sealed_at: datetime | None = None,
) -> str:
    """Write the manifest of ``period`` (and its signature); return the manifest's SHA-256.

    ``files`` are paths under the store (absolute or relative to the root); ``totals`` maps a
    name (e.g. ``amount_krw.gov``) to a decimal string (a ``Decimal`` is accepted and written
    as its string). The returned hash is that of the
    manifest file's bytes: what the next period's ``previous`` records and ``sha256sum``
    prints. Sealing again with the same inputs rewrites nothing and returns the same hash.

    Raises :class:`IntegrityError` if the period is sealed already with other content, or a
    later period is sealed already; :class:`StorageError` for a bad period, file or total.
    """
    if not _PERIOD.match(period):
        raise StorageError(f"bad period {period!r}: expected YYYY-MM")
    bad_totals = [k for k, v in totals.items() if not _is_decimal(v)]
    if bad_totals:
        raise StorageError(f"totals are not decimal strings: {', '.join(sorted(bad_totals))}")
    later = [p for p in sealed_periods(store) if p > period]
    if later:
        raise IntegrityError(f"cannot seal {period}: later period {later[0]} is sealed already")

    rel_paths = sorted({relative_path(store, f) for f in files})
    missing = [p for p in rel_paths if not store.exists(store.path(p))]
    if missing:
        raise StorageError(f"cannot seal {period}: missing files {', '.join(missing)}")
    entries = [describe_file(store, p) for p in rel_paths]

    earlier = [p for p in sealed_periods(store) if p < period]
    previous = None
    if earlier:
        previous_bytes = store.read_bytes(manifest_path(store, earlier[-1]))
        previous = {"period": earlier[-1], "sha256": hashlib.sha256(previous_bytes).hexdigest()}

    body: dict[str, object] = {
        "format": MANIFEST_FORMAT,
        "period": period,
        "files": [e.as_json() for e in entries],
        "totals": {k: str(totals[k]) for k in sorted(totals)},
        "previous": previous,
    }
    if sealed_at is not None:
        if sealed_at.tzinfo is None:
            raise StorageError("sealed_at must carry a timezone")
        body["sealed_at"] = sealed_at.isoformat()
    body["manifest_sha256"] = _body_hash(body)
    data = _canonical(body)

    target = manifest_path(store, period)
    if store.exists(target):
        existing = store.read_bytes(target)
        if existing != data:
            raise IntegrityError(
                f"{period} is sealed already with different content; a closed period is never"
                " rewritten (late usage becomes corrections in the next close)"
            )
    else:
        store.write_bytes_atomic(target, data)
    if signing_key is not None:
        store.write_bytes_atomic(target + SIGNATURE_SUFFIX, load_private_key(signing_key).sign(data))
    return hashlib.sha256(data).hexdigest()


def describe_file(store: Store, rel_path: str) -> SealedFile:
    """Hash, size, and (for Parquet) rows and schema of one file, streamed through the Store."""
    full = store.path(rel_path)
    digest = hashlib.sha256()
    size = 0
    with _fs(store).open_input_stream(full) as handle:
        while chunk := handle.read(_CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    rows = schema_text = schema_hash = None
    if rel_path.endswith(".parquet"):
        try:
            with _fs(store).open_input_file(full) as handle:
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


# -- verification ---------------------------------------------------------------------------
def verify(store: Store, public_key: Path | None = None, *, every_file: bool = True) -> VerifyReport:
    """Check every manifest, the chain, (with a key) every signature, and the sealed files:
    of every period, or (``every_file=False``) of the newest period only.

    Re-hashing every sealed file costs what the whole history weighs; the newest period's files
    plus the chain (each manifest hashed, each link checked) is what changes between two runs:
    an older period's files are covered by their manifest, which the chain covers. ``gpuledger
    verify`` checks the newest period by default and everything with ``--all``.
    """
    periods = sealed_periods(store)
    key = load_public_key(public_key) if public_key is not None else None
    differences: list[Difference] = []
    notes: list[str] = []
    files_checked = signatures_checked = 0
    sealed: dict[str, str] = {}
    previous_period: str | None = None
    previous_hash: str | None = None

    for period in periods:
        path = manifest_path(store, period)
        rel = relative_path(store, path)
        data = store.read_bytes(path)
        doc = _parse_manifest(data, period)
        if isinstance(doc, str):
            differences.append(Difference(DifferenceKind.MANIFEST_UNREADABLE, period, rel, doc))
        else:
            differences.extend(_check_self_hash(doc, period, rel))
            differences.extend(_check_chain(doc, period, previous_period, previous_hash))
            for entry in doc["files"]:
                sealed[entry["path"]] = period
                if every_file or period == periods[-1]:
                    files_checked += 1
                    differences.extend(_check_file(store, period, entry))
        sig_diff, checked = _check_signature(store, path, data, period, key)
        signatures_checked += checked
        differences.extend(sig_diff)
        previous_period, previous_hash = period, hashlib.sha256(data).hexdigest()

    extra, late = _unsealed_files(store, sealed)
    differences.extend(extra)
    notes.extend(late)
    differences.extend(_unsealed_ledger_periods(store, set(periods)))
    if periods and key is None:
        notes.append("signatures not checked: no public key given")
    return VerifyReport(tuple(periods), files_checked, signatures_checked, tuple(differences), tuple(notes))


def _parse_manifest(data: bytes, period: str) -> dict | str:
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


def _check_self_hash(doc: dict, period: str, rel: str) -> list[Difference]:
    body = {k: v for k, v in doc.items() if k != "manifest_sha256"}
    if doc.get("manifest_sha256") != _body_hash(body):
        return [Difference(DifferenceKind.MANIFEST_ALTERED, period, rel, "manifest_sha256 does not match its content")]
    return []


def _check_chain(doc: dict, period: str, prev_period: str | None, prev_hash: str | None) -> list[Difference]:
    recorded = doc.get("previous")
    expected = None if prev_period is None else {"period": prev_period, "sha256": prev_hash}
    if recorded == expected:
        return []
    if recorded is None:
        detail = f"records no previous manifest, but {prev_period} is sealed before it"
    elif prev_period is None:
        detail = f"gap in the chain: points at {recorded.get('period')}, whose manifest is missing"
    elif isinstance(recorded.get("period"), str) and prev_period < recorded["period"] < period:
        detail = (
            f"gap in the chain: points at {recorded['period']}, whose manifest is missing "
            f"(the sealed period before it is {prev_period}); restore manifests/{recorded['period']}.json"
        )
    elif recorded.get("period") != prev_period:
        detail = f"points at {recorded.get('period')}, but the previous sealed period is {prev_period}"
    else:
        detail = f"manifest of {prev_period} changed after {period} was sealed (hash differs)"
    return [Difference(DifferenceKind.CHAIN_BROKEN, period, None, f"chain broken at {period}: {detail}")]


def _check_file(store: Store, period: str, entry: Mapping) -> list[Difference]:
    rel = entry["path"]
    if not store.exists(store.path(rel)):
        return [Difference(DifferenceKind.FILE_MISSING, period, rel, "sealed file is missing")]
    now = describe_file(store, rel)
    if now.sha256 == entry.get("sha256"):
        return []
    out = [
        Difference(
            DifferenceKind.FILE_CHANGED,
            period,
            rel,
            f"SHA-256 {now.sha256[:16]}… differs from sealed {str(entry.get('sha256'))[:16]}…"
            f" ({now.size_bytes} bytes now, {entry.get('size_bytes')} sealed)",
        )
    ]
    if now.rows != entry.get("rows"):
        out.append(Difference(DifferenceKind.ROWS_CHANGED, period, rel, f"{now.rows} rows now, {entry.get('rows')} sealed"))
    if now.schema_sha256 != entry.get("schema_sha256"):
        out.append(Difference(DifferenceKind.SCHEMA_CHANGED, period, rel, "Arrow schema differs from the sealed one"))
    return out


def _check_signature(
    store: Store, path: str, data: bytes, period: str, key: Ed25519PublicKey | None
) -> tuple[list[Difference], int]:
    if key is None:
        return [], 0
    sig_path = path + SIGNATURE_SUFFIX
    rel = relative_path(store, sig_path)
    if not store.exists(sig_path):
        return [Difference(DifferenceKind.SIGNATURE_MISSING, period, rel, "no signature for this manifest")], 0
    try:
        key.verify(store.read_bytes(sig_path), data)
    except InvalidSignature:
        return [Difference(DifferenceKind.SIGNATURE_BAD, period, rel, "bad signature: manifest or signature altered, or another key")], 1
    return [], 1


def _unsealed_files(store: Store, sealed: Mapping[str, str]) -> tuple[list[Difference], list[str]]:
    """Parquet files sitting in a directory that holds sealed files, but sealed by no manifest."""
    by_dir: dict[str, str] = {}
    for rel, period in sealed.items():
        by_dir.setdefault(posixpath.dirname(rel), period)
    differences, notes = [], []
    for directory, period in sorted(by_dir.items()):
        for rel in _parquet_in(store, directory):
            if rel in sealed:
                continue
            if directory.split("/", 1)[0] in INPUT_DATASETS:
                notes.append(f"{rel}: unsealed file beside {period}'s sealed inputs (late data, billed as corrections by a later close)")
            else:
                differences.append(
                    Difference(DifferenceKind.EXTRA_FILE, period, rel, "unsealed file in a sealed partition")
                )
    return differences, notes


LEDGER_DIRS = ("ledgers/billing", "ledgers/compliance")


def _ledger_partitions(store: Store) -> list[tuple[str, str]]:
    """(period, ledger partition dir relative to the root) of every ledger partition with files."""
    out = []
    for ledger in LEDGER_DIRS:
        base = store.path(ledger)
        if not store.exists(base):
            continue
        for info in _fs(store).get_file_info(pafs.FileSelector(base)):
            name = posixpath.basename(info.path)
            if info.type == pafs.FileType.Directory and name.startswith("period="):
                if _parquet_in(store, f"{ledger}/{name}"):
                    out.append((name[len("period=") :], f"{ledger}/{name}"))
    return sorted(out)


def ledger_periods(store: Store) -> list[str]:
    """Periods that have ledger files (sealed or not), oldest first."""
    return sorted({period for period, _ in _ledger_partitions(store)})


def _unsealed_ledger_periods(store: Store, periods: set[str]) -> list[Difference]:
    """A ledger partition ``period=X`` with no manifest for X (e.g. a deleted manifest)."""
    return [
        Difference(DifferenceKind.UNSEALED_PERIOD, period, rel, "ledger has no manifest")
        for period, rel in _ledger_partitions(store)
        if period not in periods
    ]


def _parquet_in(store: Store, rel_dir: str) -> list[str]:
    base = store.path(rel_dir)
    if not store.exists(base):
        return []
    return sorted(
        relative_path(store, info.path)
        for info in _fs(store).get_file_info(pafs.FileSelector(base))
        if info.type == pafs.FileType.File
        and info.path.endswith(".parquet")
        and not posixpath.basename(info.path).startswith((".", "_"))
    )


# -- damage reports -------------------------------------------------------------------------
def find_damaged(store: Store, limit: int = 3) -> list[str]:
    """Files under the store that cannot be read, as ``"<path>: <what is wrong>"`` (at most ``limit``).

    For error reports after a read failed with a vendor error that names no file (a truncated
    Parquet file, a garbled Delta log entry): every Parquet file is read in full, every log entry
    and manifest parsed. Slow on a large store, and only run when something already failed.
    """
    found: list[str] = []
    selector = pafs.FileSelector(store.root, recursive=True, allow_not_found=True)
    for info in sorted(_fs(store).get_file_info(selector), key=lambda i: i.path):
        if info.type != pafs.FileType.File or len(found) >= limit:
            continue
        rel = relative_path(store, info.path)
        name = posixpath.basename(rel)
        if name.startswith(".") or rel.startswith("bus/"):
            continue
        problem = None
        if name.endswith(".parquet"):
            try:
                with _fs(store).open_input_file(info.path) as handle:
                    pq.ParquetFile(handle).read()
            except Exception as exc:  # noqa: BLE001 - any failure to read is the damage to report
                problem = f"not a readable Parquet file ({_first_line(exc)})"
        elif name.endswith(".json") and "/_delta_log/" in f"/{rel}":
            try:
                for line in store.read_bytes(info.path).decode().splitlines():
                    if line.strip():
                        json.loads(line)
            except ValueError as exc:
                problem = f"garbled Delta log entry, not JSON lines ({exc})"
        elif name.endswith(".json") and rel.startswith(f"{MANIFEST_DIR}/"):
            try:
                json.loads(store.read_bytes(info.path))
            except ValueError as exc:
                problem = f"garbled manifest, not JSON ({exc})"
        if problem is not None:
            found.append(f"{store.path(rel)}: {problem}")
    return found


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


# -- keys -----------------------------------------------------------------------------------
def generate_keypair(private_path: Path, public_path: Path) -> None:
    """Write a new Ed25519 key pair: PKCS#8 PEM private key (mode 0600) and SPKI PEM public key.

    Refuses to overwrite an existing private key (losing it means no more valid seals).
    """
    private_path, public_path = Path(private_path), Path(public_path)
    if private_path.exists():
        raise StorageError(f"{private_path} exists already; refusing to overwrite a signing key")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    private_path.parent.mkdir(parents=True, exist_ok=True)
    public_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private_pem)
    public_path.write_bytes(public_pem)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise StorageError(f"cannot load signing key {path}: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise StorageError(f"{path} is not an Ed25519 private key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise StorageError(f"cannot load public key {path}: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise StorageError(f"{path} is not an Ed25519 public key")
    return key


# -- helpers --------------------------------------------------------------------------------
def _canonical(doc: Mapping[str, object]) -> bytes:
    return (json.dumps(doc, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode()


def _body_hash(body: Mapping[str, object]) -> str:
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


def _fs(store: Store) -> pafs.FileSystem:
    """The Store's filesystem: manifests live in the storage room and stream large files."""
    return store._fs  # noqa: SLF001 - same package


def iter_manifests(store: Store) -> Iterable[tuple[str, dict]]:
    """(period, parsed manifest) for each readable manifest, oldest first (exports use this)."""
    for period in sealed_periods(store):
        doc = _parse_manifest(store.read_bytes(manifest_path(store, period)), period)
        if isinstance(doc, dict):
            yield period, doc
