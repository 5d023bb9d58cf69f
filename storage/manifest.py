"""Sealed period manifests: one import for the four pieces that each read alone.

- :mod:`storage.seal`: writing a month's manifest and reading seals back, failing closed;
- :mod:`storage.verify`: ``gpuledger verify`` (every difference, named);
- :mod:`storage.keys`: the operator's Ed25519 keys and detached signatures;
- :mod:`storage.damage`: naming unreadable files after a vendor read failed.

Callers may import from here or from the piece itself.
"""

from __future__ import annotations

from storage.damage import find_damaged
from storage.keys import SIGNATURE_SUFFIX, generate_keypair, load_private_key, load_public_key
from storage.seal import (
    INPUT_DATASETS,
    LEDGER_DIRS,
    MANIFEST_DIR,
    MANIFEST_FORMAT,
    SealedFile,
    SealUnreadable,
    content_sha256,
    describe_file,
    ledger_periods,
    manifest_path,
    read_manifest,
    relative_path,
    seal_period,
    sealed_files,
    sealed_periods,
)
from storage.verify import Difference, DifferenceKind, VerifyReport, verify

__all__ = [
    "INPUT_DATASETS", "LEDGER_DIRS", "MANIFEST_DIR", "MANIFEST_FORMAT", "SIGNATURE_SUFFIX",
    "Difference", "DifferenceKind", "SealUnreadable", "SealedFile", "VerifyReport",
    "content_sha256", "describe_file", "find_damaged", "generate_keypair",
    "ledger_periods", "load_private_key", "load_public_key", "manifest_path", "read_manifest",
    "relative_path", "seal_period", "sealed_files", "sealed_periods", "verify",
]
