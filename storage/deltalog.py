"""What each file of a table recorded when it was committed, read from the Delta log.

Every ``add`` our writers commit carries, inside its ``stats`` JSON, the key
:data:`SHA256_STAT` (the SHA-256 of the file's bytes, computed before the commit), its row
count and min/max of the pruning columns. Delta keeps ``stats`` verbatim in its checkpoints,
so the current record of every live file is the newest checkpoint plus the commits after it
(at most ~100 small JSON files): the cost follows the table's current size, not its history.
``deltalake`` does not expose raw stats, hence this small reader of the log (the protocol's
documented JSON and checkpoint layout).

:class:`TableLog` reads the log once and then only the commits after the last one it read
(the dedupe's verified reads ask it on every lookup of a file it does not know yet).

Damage (invariant 9, named, never a traceback): a garbled ``_last_checkpoint`` or checkpoint
file is skipped with one warning line when the log can be read from version 0 instead (the
JSON entries are all there); otherwise, and for a garbled log entry, :class:`DamagedLog`
names the file and the next step.

:func:`damaged_files` re-hashes files and names every one whose bytes are not what was
committed, and every one the log lists that is gone: damage before any close sealed a file is
caught too (verify ``--all``, and the roll-up before it reads a day of ``raw``).
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import posixpath
from collections.abc import Iterable

import pyarrow.parquet as pq

from storage.dataset import Store
from storage.delta import SHA256_STAT
from storage.errors import StorageError

log = logging.getLogger(__name__)


class DamagedLog(StorageError):
    """A ``_delta_log`` file cannot be read; the message names it and the next step."""


@dataclasses.dataclass(frozen=True, slots=True)
class Recorded:
    """What the commit that added a file recorded about it."""

    sha256: str | None
    size_bytes: int | None
    rows: int | None
    min_values: dict
    max_values: dict
    version: int | None  # the commit that added it (None: known from a checkpoint only)


class TableLog:
    """Live files of one table with what their commits recorded, read incrementally."""

    def __init__(self, store: Store, dataset: str):
        self._store = store
        self.dataset = dataset
        self.version = -1  # the last log entry read
        self.live: dict[str, Recorded] = {}
        # path -> (version of its remove, what its add recorded): recent ones, so that a reader
        # pinned to an older version (a batch's checkpoint) can still check a file compaction removed since
        self.removed: dict[str, tuple[int, Recorded]] = {}

    def refresh(self) -> TableLog:
        """Read the commits after the last one read (the checkpoint first, on the first call)."""
        store, dataset = self._store, self.dataset
        if self.version < 0:
            if not store.exists(store.path(dataset, "_delta_log")):
                return self
            self.version = self._from_checkpoint()
        version = self.version + 1
        while (actions := commit_actions(store, dataset, version)) is not None:
            for action in actions:
                if "add" in action:
                    add = action["add"]
                    self.live[add["path"]] = _recorded(add, version)
                    self.removed.pop(add["path"], None)
                elif "remove" in action:
                    path = action["remove"]["path"]
                    gone = self.live.pop(path, None)
                    if gone is not None:
                        self.removed[path] = (version, gone)
            self.version = version
            version += 1
        if len(self.removed) > 10_000:  # a memory bound: keep the newest removes only
            for path, _ in sorted(self.removed.items(), key=lambda kv: kv[1][0])[:5_000]:
                del self.removed[path]
        return self

    def _from_checkpoint(self) -> int:
        """Load the newest checkpoint; returns its version (-1: none, read from version 0).

        ``_last_checkpoint`` names it; when that pointer is garbled, the newest
        ``*.checkpoint.parquet`` listed in the log is used (as delta-rs does), and when that
        is unreadable too, the log from version 0 — each time with one warning line."""
        store, dataset = self._store, self.dataset
        where = f"{dataset}/_delta_log"
        pointer = store.path(dataset, "_delta_log", "_last_checkpoint")
        if not store.exists(pointer):
            return -1
        candidates: list[int] = []
        try:
            candidates.append(int(json.loads(store.read_bytes(pointer))["version"]))
        except (ValueError, KeyError, TypeError, OSError) as exc:
            listed = sorted(
                (int(name[:20]) for name in (posixpath.basename(p) for p in store.list_files(
                    store.path(dataset, "_delta_log"), ".checkpoint.parquet")) if name[:20].isdigit()),
                reverse=True,
            )
            _warn_once(
                (store.path(dataset), "pointer"),
                "%s/_last_checkpoint is damaged (%s): using the newest checkpoint listed in the log (%s) instead; "
                "nothing is lost (the next checkpoint rewrites the pointer, or restore it from a backup)",
                where, _first_line(exc), f"version {listed[0]}" if listed else "none: reading from version 0",
            )
            candidates.extend(listed[:1])
        for start in candidates:
            checkpoint = store.path(dataset, "_delta_log", f"{start:020d}.checkpoint.parquet")
            try:
                table = pq.read_table(io.BytesIO(store.read_bytes(checkpoint)), columns=["add"])
            except (ValueError, KeyError, TypeError, OSError) as exc:
                if commit_actions(store, dataset, 0) is None:
                    raise DamagedLog(
                        f"{where}/{start:020d}.checkpoint.parquet is damaged ({_first_line(exc)}) and the log's early "
                        f"entries are gone, so {dataset} cannot be read without it: restore {where} from a backup"
                    ) from exc
                _warn_once(
                    (store.path(dataset), start),
                    "%s/%020d.checkpoint.parquet is damaged (%s): reading the log from version 0 instead (nothing "
                    "is lost; restore the file from a backup, or let the next checkpoint supersede it)",
                    where, start, _first_line(exc),
                )
                return -1
            for add in table.column("add").to_pylist():
                if add:
                    self.live[add["path"]] = _recorded(add, None)
            return start
        if commit_actions(store, dataset, 0) is None:
            raise DamagedLog(f"{where}/_last_checkpoint is damaged, no checkpoint is listed and the log's early "
                             f"entries are gone: restore {where} from a backup")
        return -1


def recorded_sha256(store: Store, dataset: str) -> dict[str, str | None]:
    """Live files of ``dataset`` (paths relative to the table) → SHA-256 recorded at commit
    (``None`` for a file committed without one)."""
    return {path: r.sha256 for path, r in TableLog(store, dataset).refresh().live.items()}


def commit_actions(store: Store, dataset: str, version: int) -> list[dict] | None:
    """The actions of one commit of ``dataset`` (``None`` when its log entry does not exist).
    Raises :class:`DamagedLog` naming the entry when it is not JSON lines of actions."""
    path = store.path(dataset, "_delta_log", f"{version:020d}.json")
    try:
        text = store.read_bytes(path).decode()
        actions = [json.loads(line) for line in text.splitlines() if line.strip()]
        if not all(isinstance(a, dict) for a in actions):
            raise ValueError("a line is not a JSON object")
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError) as exc:
        raise DamagedLog(
            f"{dataset}/_delta_log/{version:020d}.json is damaged ({_first_line(exc)}): the table cannot be "
            f"read past version {version - 1}; restore that file from a backup"
        ) from exc
    return actions


def damaged_files(
    store: Store, dataset: str, paths: Iterable[str] | None = None, recorded: dict[str, str | None] | None = None
) -> list[str]:
    """``"<dataset>/<path>: …"`` for each live file (or each of ``paths``, relative to the
    table) whose bytes no longer hash to what was recorded when it was committed, or that is
    gone (``recorded``: :func:`recorded_sha256`, when the caller has read it already)."""
    recorded = recorded_sha256(store, dataset) if recorded is None else recorded
    out = []
    for rel in sorted(recorded if paths is None else paths):
        expected = recorded.get(rel)
        if expected is None:
            continue
        try:
            actual, _ = store.sha256_of(store.path(dataset, rel))
        except FileNotFoundError:
            out.append(
                f"{dataset}/{rel}: missing (the Delta log lists it); restore it from a backup, or record the loss "
                f"with `gpuledger storage record-loss --file {dataset}/{rel} --reason TEXT`"
            )
            continue
        except OSError as exc:
            out.append(f"{dataset}/{rel}: unreadable ({exc})")
            continue
        if actual != expected:
            out.append(f"{dataset}/{rel}: SHA-256 {actual[:16]}… is not the {expected[:16]}… recorded when it was committed")
    return out


def _recorded(add: dict, version: int | None) -> Recorded:
    stats: dict = {}
    if add.get("stats"):
        try:
            stats = json.loads(add["stats"])
        except ValueError:
            stats = {}
    return Recorded(
        sha256=stats.get(SHA256_STAT),
        size_bytes=add.get("size"),
        rows=stats.get("numRecords"),
        min_values=stats.get("minValues") or {},
        max_values=stats.get("maxValues") or {},
        version=version,
    )


_WARNED: set[tuple[str, object]] = set()


def _warn_once(key: tuple[str, object], message: str, *args: object) -> None:
    """One warning line per damaged file and process (a close reads the log several times)."""
    if key not in _WARNED:
        _WARNED.add(key)
        log.warning(message, *args)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
