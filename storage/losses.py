"""A data file that is gone for good, recorded honestly instead of silently read as zero.

When a file the Delta log lists is missing (or damaged) and no backup exists, an operator runs
``gpuledger storage record-loss --file raw/… --reason TEXT``. :func:`record_loss` then

1. writes a loss record ``<data-dir>/losses/<table>/<file name>.json``: the file, its table,
   the SHA-256, size, row count and time range its commit recorded (the hours it held), the
   version that added it, who recorded the loss, when and why — what an auditor asks first:
   *what* was lost, *how much*, *which hours*, *on whose word*;
2. for a ``raw`` file whose date was rolled up into ``usage_hourly`` after the file was
   committed, also *whose* usage: ``usage_hourly`` of the date minus the roll-up of the date's
   other files, per entity × project × GPU model (GPU-µs and events). It is kept only when it
   checks out exactly: no negative difference and the events sum to the file's recorded rows;
   otherwise the record says the split is unknown;
3. commits a Delta ``remove`` of the file (so readers stop failing on it), in the same table's
   history as every other change. The next roll-up drops the lost usage from ``usage_hourly``
   (what is billed is what ``raw`` can prove); the month's close flags the entity × model rows
   of the compliance ledger ``data_lost`` (every national row when the split is unknown) and
   seals the loss records with the month; the findings carry the figures.

A file of a date sealed by a close is refused (the close billed it when it was intact; only a
restore from backup keeps that month re-derivable). Nothing is estimated or zero-filled.
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


def record_loss(store: Store, file: str, reason: str, *, who: str | None = None, now: datetime | None = None,
                lease=None) -> dict:  # noqa: ANN001 - storage.lease.Lease
    """Record ``file`` (``<table>/<path in the table>``) as lost; returns the loss record.
    Under the store's ``lease`` (the CLI takes it) the remove carries its fencing token, and no
    close or upkeep runs meanwhile."""
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
    _refuse_sealed(store, dataset, rel)
    at = (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    lost_usage = _lost_usage(store, rel, recorded, table_log) if dataset == "raw" else None
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
        "lost_usage": lost_usage,  # per entity × project × GPU model, or None: unknown
    }
    target = store.path(LOSSES_DIR, dataset, posixpath.basename(rel) + ".json")
    store.write_bytes_atomic(target, (json.dumps(record, indent=1, sort_keys=True) + "\n").encode())
    fence = lease.fence(dataset) if lease is not None else None
    record["removed_in_version"] = store.commit_files(dataset, [], removes=[rel], txns=fence)
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


def _refuse_sealed(store: Store, dataset: str, rel: str) -> None:
    from storage.seal import sealed_files

    date_dir = "/".join(rel.split("/")[:2])
    sealed = [f for f in sealed_files(store) if f.startswith(("usage_hourly/" + date_dir + "/", f"{dataset}/{rel}"))]
    if sealed:
        raise StorageError(
            f"{dataset}/{rel} holds usage of {date_dir}, which a close has sealed ({sealed[0]}): that month was billed "
            "while the file was intact; restore the file from a backup to keep the month re-derivable (a loss "
            "cannot be recorded against a sealed month)"
        )


def _lost_usage(store: Store, rel: str, recorded, table_log: TableLog) -> list[dict] | None:  # noqa: ANN001
    """What the lost raw file held per entity × project × GPU model, when ``usage_hourly``
    knows it exactly (see the module docstring); ``None`` otherwise."""
    import polars as pl

    from storage.rollup import ROLLUP_APP, hourly_rows
    from storage.schemas import RAW_EVENTS, USAGE_HOURLY

    usage = store.table("usage_hourly")
    if usage.table() is None or recorded.rows is None:
        return None
    rolled_at = usage.transaction_version(ROLLUP_APP)
    if rolled_at is None or (recorded.version is not None and recorded.version > rolled_at):
        return None  # the date was not rolled up since the file came: its split is not known
    date_dir = "/".join(rel.split("/")[:2]) + "/"
    others = [
        store.path("raw", p) for p, r in table_log.live.items()
        if p.startswith(date_dir) and p != rel and (r.version is None or r.version <= rolled_at)
    ]
    keys = ["entity", "project", "gpu_model"]
    before = (
        store.scan_files(store.files("usage_hourly/" + date_dir.rstrip("/")), USAGE_HOURLY)
        .group_by(keys).agg(pl.col("gpu_microseconds").sum(), pl.col("events").sum()).collect()
    )
    after = (
        hourly_rows(store.scan_files(others, RAW_EVENTS))
        .group_by(keys).agg(pl.col("gpu_microseconds").sum().alias("us_after"), pl.col("events").sum().alias("ev_after"))
        .collect()
    )
    diff = (
        before.join(after, on=keys, how="full", coalesce=True)
        .select(*keys, gpu_microseconds=pl.col("gpu_microseconds").fill_null(0) - pl.col("us_after").fill_null(0),
                events=pl.col("events").fill_null(0) - pl.col("ev_after").fill_null(0))
        .filter((pl.col("gpu_microseconds") != 0) | (pl.col("events") != 0))
        .sort(keys)
    )
    if diff.height == 0 or (diff["gpu_microseconds"] < 0).any() or (diff["events"] < 0).any():
        return None
    if int(diff["events"].sum()) != int(recorded.rows):
        return None
    return [{k: (int(v) if isinstance(v, int) else v) for k, v in row.items()} for row in diff.iter_rows(named=True)]


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
