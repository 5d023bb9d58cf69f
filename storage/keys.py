"""Ed25519 keys of the operator who seals months (``gpuledger keys generate``).

A manifest may carry a detached signature ``YYYY-MM.json.sig``: 64 raw bytes over the
manifest's bytes, so ``openssl pkeyutl -verify -rawin`` checks it as well as ``verify``. Key
files are the operator's, on the local disk: the one place storage reads with ``pathlib``.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from storage.errors import StorageError

SIGNATURE_SUFFIX = ".sig"


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
