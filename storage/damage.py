"""Damage reports: which stored files cannot be read, named one per line.

Used after a read failed with a vendor error that names no file (a truncated Parquet file, a
garbled Delta log entry or manifest), so the one-line error can say which file to restore.
"""

from __future__ import annotations

import json
import posixpath

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from storage.dataset import Store
from storage.seal import MANIFEST_DIR, fs_of, relative_path


def find_damaged(store: Store, limit: int = 3) -> list[str]:
    """Files under the store that cannot be read, as ``"<path>: <what is wrong>"`` (at most ``limit``).

    For error reports after a read failed with a vendor error that names no file (a truncated
    Parquet file, a garbled Delta log entry): every Parquet file is read in full, every log entry
    and manifest parsed. Slow on a large store, and only run when something already failed.
    """
    found: list[str] = []
    selector = pafs.FileSelector(store.root, recursive=True, allow_not_found=True)
    for info in sorted(fs_of(store).get_file_info(selector), key=lambda i: i.path):
        if info.type != pafs.FileType.File or len(found) >= limit:
            continue
        rel = relative_path(store, info.path)
        name = posixpath.basename(rel)
        if name.startswith(".") or rel.startswith("bus/"):
            continue
        problem = None
        if name.endswith(".parquet"):
            try:
                with fs_of(store).open_input_file(info.path) as handle:
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
