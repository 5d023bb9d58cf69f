"""A data file that is gone for good, recorded honestly instead of silently read as zero.

When a file the Delta log lists is missing (or damaged) and no backup exists, an operator runs
``gpuledger storage record-loss --file raw/… --reason TEXT``. :func:`record_loss` then

1. writes a loss record ``<data-dir>/losses/<table>/<file name>.json``: the file, its table,
   the SHA-256, size, row count and time range its commit recorded (the hours it held), the
   version that added it, who recorded the loss, when and why — what an auditor asks first:
   *what* was lost, *how much*, *which hours*, *on whose word*;
2. commits a Delta ``remove`` of the file (so readers stop failing on it), in the same table's
   history as every other change.

Nothing is estimated or zero-filled: the rows are gone and the record says how many.
"""

from __future__ import annotations

import getpass
import json
import posixpath
from datetime import UTC, datetime

from storage.dataset import Store
from storage.deltalog import TableLog
from storage.errors import StorageError
from storage.schemas import TABLES

LOSSES_DIR = "losses"


def record_loss(store: Store, file: str, reason: str, *, who: str | None = None, now: datetime | None = None) -> dict:
    """Record ``file`` (``<table>/<path in the table>``) as lost; returns the loss record."""
    dataset, _, rel = file.strip("/").partition("/")
    if dataset not in TABLES or not rel:
        raise StorageError(f"{file!r} is not a table file: give it as <table>/<path>, e.g. raw/period=…/part-….parquet")
    if not reason.strip():
        raise StorageError("record-loss needs a --reason (it is kept in the loss record)")
    table_log = TableLog(store, dataset).refresh()
    recorded = table_log.live.get(rel)
    if recorded is None:
        raise StorageError(f"{file} is not listed by the {dataset} table's Delta log (version {table_log.version}): nothing to record")
    if store.exists(store.path(dataset, rel)):
        actual, _ = store.sha256_of(store.path(dataset, rel))
        if actual == recorded.sha256:
            raise StorageError(f"{file} is present and holds the bytes its commit recorded: it is not lost")
    at = (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    record = {
        "format": 1,
        "table": dataset,
        "file": rel,
        "sha256": recorded.sha256,
        "size_bytes": recorded.size_bytes,
        "rows": recorded.rows,
        "period": recorded.min_values.get("period"),
        "date": recorded.min_values.get("date"),
        "first_interval_start": recorded.min_values.get("interval_start") or recorded.min_values.get("hour_start"),
        "last_interval_start": recorded.max_values.get("interval_start") or recorded.max_values.get("hour_start"),
        "added_in_version": recorded.version,
        "recorded_at": at,
        "recorded_by": who or _user(),
        "reason": reason,
    }
    target = store.path(LOSSES_DIR, dataset, posixpath.basename(rel) + ".json")
    store.write_bytes_atomic(target, (json.dumps(record, indent=1, sort_keys=True) + "\n").encode())
    record["removed_in_version"] = store.commit_files(dataset, [], removes=[rel])
    store.write_bytes_atomic(target, (json.dumps(record, indent=1, sort_keys=True) + "\n").encode())
    return record


def losses(store: Store, period: str | None = None) -> list[dict]:
    """Every loss record (of ``period`` when given), oldest first."""
    out = []
    for table in TABLES:
        base = store.path(LOSSES_DIR, table)
        if not store.exists(base):
            continue
        for path in store.list_files(base, ".json"):
            record = json.loads(store.read_bytes(path))
            if period is None or record.get("period") == period:
                out.append(record)
    return sorted(out, key=lambda r: (r["recorded_at"], r["table"], r["file"]))


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
