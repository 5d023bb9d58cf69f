"""``gpuledger verify``: re-hash what every manifest seals, re-walk the chain, check signatures.

:func:`verify` names every difference it finds (invariant 5): a sealed file changed or missing,
a row count or schema that differs, a ``raw`` file the close read that is gone or changed, a
manifest that is unreadable or altered, a broken chain or a missing manifest between sealed
ones, a bad or missing signature, a ledger with no manifest, an unsealed file in a sealed
ledger partition. It reads; it never repairs.
"""

from __future__ import annotations

import hashlib
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from storage.dataset import Store
from storage.keys import SIGNATURE_SUFFIX, load_public_key
from storage.seal import (
    INPUT_DATASETS,
    content_sha256,
    describe_file,
    ledger_partitions,
    manifest_path,
    parquet_in,
    parse_manifest,
    read_files,
    relative_path,
    sealed_periods,
    self_hash_ok,
)


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
        doc = parse_manifest(data, period)
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
            if every_file or period == periods[-1]:
                for entry in read_files(doc):  # not listed beside: raw holds other months' files too
                    files_checked += 1
                    differences.extend(_check_read_file(store, period, entry))
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


def _check_self_hash(doc: dict, period: str, rel: str) -> list[Difference]:
    if not self_hash_ok(doc):
        return [Difference(DifferenceKind.MANIFEST_ALTERED, period, rel, "manifest_sha256 does not match its content")]
    if "content_sha256" in doc and doc["content_sha256"] != content_sha256(doc):
        return [Difference(DifferenceKind.MANIFEST_ALTERED, period, rel, "content_sha256 does not match what it seals")]
    return []


def _check_read_file(store: Store, period: str, entry: Mapping) -> list[Difference]:
    """A ``raw`` file the close read: still there, with the SHA-256 recorded at its commit."""
    rel = entry["path"]
    if not store.exists(store.path(rel)):
        return [Difference(DifferenceKind.FILE_MISSING, period, rel, "raw file the close read is missing")]
    sha, size = store.sha256_of(store.path(rel))
    if entry.get("sha256") and sha != entry["sha256"]:
        return [Difference(DifferenceKind.FILE_CHANGED, period, rel,
                           f"SHA-256 {sha[:16]}… differs from the one recorded at its commit ({size} bytes now)")]
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
        for rel in parquet_in(store, directory):
            if rel in sealed:
                continue
            if directory.split("/", 1)[0] in INPUT_DATASETS:
                notes.append(f"{rel}: unsealed file beside {period}'s sealed inputs (late data, billed as corrections by a later close)")
            else:
                differences.append(
                    Difference(DifferenceKind.EXTRA_FILE, period, rel, "unsealed file in a sealed partition")
                )
    return differences, notes


def _unsealed_ledger_periods(store: Store, periods: set[str]) -> list[Difference]:
    """A ledger partition ``period=X`` with no manifest for X (e.g. a deleted manifest)."""
    return [
        Difference(DifferenceKind.UNSEALED_PERIOD, period, rel, "ledger has no manifest")
        for period, rel in ledger_partitions(store)
        if period not in periods
    ]
