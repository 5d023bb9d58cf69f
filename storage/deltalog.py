"""The SHA-256 recorded for each file of a table when it was committed, read from the Delta log.

Every ``add`` our writers commit carries, inside its ``stats`` JSON, the key
:data:`SHA256_STAT` (the SHA-256 of the file's bytes, computed before the commit). Delta keeps
``stats`` verbatim in its checkpoints, so the current record of every live file is the newest
checkpoint plus the commits after it (at most ~100 small JSON files): the cost follows the
table's current size, not its history. ``deltalake`` does not expose raw stats, hence this
small reader of the log (the protocol's documented JSON and checkpoint layout).

:func:`damaged_files` re-hashes files and names every one whose bytes are not what was
committed: damage before any close sealed a file is caught too (verify ``--all``, and the
roll-up before it reads a day of ``raw``).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable

import pyarrow.parquet as pq

from storage.dataset import Store
from storage.delta import SHA256_STAT


def recorded_sha256(store: Store, dataset: str) -> dict[str, str | None]:
    """Live files of ``dataset`` (paths relative to the table) → SHA-256 recorded at commit
    (``None`` for a file committed without one)."""
    log = store.path(dataset, "_delta_log")
    if not store.exists(log):
        return {}
    start = -1
    live: dict[str, str | None] = {}
    pointer = store.path(dataset, "_delta_log", "_last_checkpoint")
    if store.exists(pointer):
        start = int(json.loads(store.read_bytes(pointer))["version"])
        checkpoint = store.path(dataset, "_delta_log", f"{start:020d}.checkpoint.parquet")
        table = pq.read_table(io.BytesIO(store.read_bytes(checkpoint)), columns=["add"])
        for add in table.column("add").to_pylist():
            if add:
                live[add["path"]] = _sha_of(add.get("stats"))
    version = start + 1
    while (actions := commit_actions(store, dataset, version)) is not None:
        for action in actions:
            if "add" in action:
                live[action["add"]["path"]] = _sha_of(action["add"].get("stats"))
            elif "remove" in action:
                live.pop(action["remove"]["path"], None)
        version += 1
    return live


def commit_actions(store: Store, dataset: str, version: int) -> list[dict] | None:
    """The actions of one commit of ``dataset`` (``None`` when its log entry does not exist)."""
    path = store.path(dataset, "_delta_log", f"{version:020d}.json")
    try:
        text = store.read_bytes(path).decode()
    except FileNotFoundError:
        return None
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def damaged_files(
    store: Store, dataset: str, paths: Iterable[str] | None = None, recorded: dict[str, str | None] | None = None
) -> list[str]:
    """``"<dataset>/<path>: …"`` for each live file (or each of ``paths``, relative to the
    table) whose bytes no longer hash to what was recorded when it was committed
    (``recorded``: :func:`recorded_sha256`, when the caller has read it already)."""
    recorded = recorded_sha256(store, dataset) if recorded is None else recorded
    out = []
    for rel in sorted(recorded if paths is None else paths):
        expected = recorded.get(rel)
        if expected is None:
            continue
        try:
            actual, _ = store.sha256_of(store.path(dataset, rel))
        except OSError as exc:
            out.append(f"{dataset}/{rel}: unreadable ({exc})")
            continue
        if actual != expected:
            out.append(f"{dataset}/{rel}: SHA-256 {actual[:16]}… is not the {expected[:16]}… recorded when it was committed")
    return out


def _sha_of(stats: str | None) -> str | None:
    if not stats:
        return None
    try:
        return json.loads(stats).get(SHA256_STAT)
    except ValueError:
        return None
