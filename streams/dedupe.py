"""Which event ids are already stored: a bounded event-time window, then storage, hour by hour.

Two mechanisms keep an event from being counted twice (docs/architecture.md, "Exactly once"):

1. **Bus replays** (a consumer restarted, a partition moved, a commit was lost) are caught by
   offsets, not by ids: each ``raw`` commit records, per Kafka partition, the last offset it
   holds (storage's ``txn``), and the pipeline drops messages at or below it.
2. **Re-sends** (a collector's spool sending an interval again, ``ingest`` of the same file)
   arrive as new messages with old ``event_id``\\ s. They are caught here, by id, within the
   event's own UTC hour (ids are unique per device-interval and an interval lies in one hour):

   * hours within ``window_hours`` of the newest hour this process has seen are held in
     memory: the ids stored for the hour (loaded from ``raw`` on first touch, so ids stored
     by an earlier process or before a rebalance count) plus those this process stored since;
   * an event of an older hour is checked against ``raw`` for that hour only, reading only the
     ids it asks about (a predicate pushed into the scan), so memory stays bounded by the batch.

Memory is bounded by the load, never by history: ids are held as two 64-bit integers (the
128-bit id exactly) plus a 64-bit fingerprint of the event's values (a re-send with other values
is a conflict, not a duplicate): 24 bytes, so the window costs about 24 bytes × events per hour × hours
kept. At national load (~18M events an hour across the programme) and the 2 hours held that is ~0.9 GB
for a consumer that owns every partition, and 1/N of it with N consumers.

Ids are added only after their batch committed (marking them first would lose them if the
write failed — openmeter#5118). :meth:`EventWindow.clear` forgets everything (the pipeline
calls it when a commit conflicted: another writer stored something this process did not see).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

import numpy as np
import polars as pl

from storage.dataset import Store
from storage.schemas import RAW_EVENTS

RAW = "raw"
_HOUR = timedelta(hours=1)


# what an event says, beyond its id: two copies of one id that differ here are a conflict
VALUE_COLUMNS = (
    "site", "node", "gpu_uuid", "device_uuid", "gpu_model", "mig_profile", "gpu_fraction", "entity",
    "project", "job_id", "interval_start", "interval_end", "gpu_microseconds", "busy_gpu_microseconds",
    "energy_joules", "samples", "expected_samples", "flags",
)


_STORED_TYPES = pl.from_arrow(RAW_EVENTS.empty_table()).schema


def fingerprint() -> pl.Expr:
    """A 64-bit hash of a raw row's values, in their stored types (so a row in memory and the
    same row read back from Parquet hash alike). Stable within one process and Polars version:
    the window rebuilds fingerprints from storage, so nothing persisted depends on it."""
    return pl.struct([pl.col(c).cast(_STORED_TYPES[c]) for c in VALUE_COLUMNS]).hash(seed=20261201).alias("fp")


def id_words(event_ids: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """The 128-bit ids (32 hex characters) as (high, low) 64-bit words."""
    frame = pl.DataFrame({"id": event_ids}).select(
        hi=pl.col("id").str.slice(0, 16).str.to_integer(base=16, dtype=pl.UInt64(), strict=False).fill_null(0),
        lo=pl.col("id").str.slice(16, 16).str.to_integer(base=16, dtype=pl.UInt64(), strict=False).fill_null(0),
    )
    return frame["hi"].to_numpy(), frame["lo"].to_numpy()


@dataclass(slots=True)
class HourIds:
    """The (hi, lo) ids of one hour with each id's value fingerprint, as O(log n) runs, each
    ordered by the high word (stable: ids that share a high word keep their arrival order).

    Adding sorts the batch by ``hi`` and merges two runs already ordered by ``hi`` with one
    ``searchsorted`` of the smaller into the larger and linear moves (no re-sort of the merged
    run); a lookup is one ``searchsorted`` per run. Two ids that share their high 64 bits (odds
    2^-64 per pair) are told apart by a scan of the few entries with that high word.
    Invariant: every run's ``hi`` is non-decreasing; ``size`` is the number of entries held.
    """

    runs: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)
    size: int = 0

    def add(self, hi: np.ndarray, lo: np.ndarray, fp: np.ndarray | None = None) -> None:
        if hi.size == 0:
            return
        fp = np.zeros(hi.size, dtype=np.uint64) if fp is None else fp
        order = np.argsort(hi, kind="stable")
        self.runs.append((hi[order], lo[order], fp[order]))
        self.size += int(hi.size)
        # keep O(log n) runs, merging a run into the one before once it is half its size or
        # more (log-structured: each id is merged O(log n) times, not once per batch)
        while len(self.runs) >= 2 and 2 * self.runs[-1][0].size >= self.runs[-2][0].size:
            (a_hi, a_lo, a_fp), (b_hi, b_lo, b_fp) = self.runs[-2], self.runs[-1]
            self.runs[-2:] = [_merge_runs(a_hi, a_lo, a_fp, b_hi, b_lo, b_fp)]

    def lookup(self, hi: np.ndarray, lo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(found, the stored fingerprint where found)."""
        found = np.zeros(hi.size, dtype=bool)
        stored = np.zeros(hi.size, dtype=np.uint64)
        for run_hi, run_lo, run_fp in self.runs:
            last = run_hi.size - 1
            left = np.searchsorted(run_hi, hi, side="left")
            idx = np.minimum(left, last)
            same_hi = run_hi[idx] == hi
            hit = same_hi & (run_lo[idx] == lo) & ~found
            stored[hit] = run_fp[idx[hit]]
            found |= hit
            # the entry after the first with this high word shares it too: scan that group
            nxt = np.minimum(idx + 1, last)
            for i in np.flatnonzero(same_hi & ~found & (idx < last) & (run_hi[nxt] == hi)):
                j = int(idx[i])
                while j <= last and run_hi[j] == hi[i]:
                    if run_lo[j] == lo[i]:
                        found[i] = True
                        stored[i] = run_fp[j]
                        break
                    j += 1
        return found, stored

    def contains(self, hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
        return self.lookup(hi, lo)[0]


def _merge_runs(
    a_hi: np.ndarray, a_lo: np.ndarray, a_fp: np.ndarray, b_hi: np.ndarray, b_lo: np.ndarray, b_fp: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two runs ordered by ``hi`` as one, in linear memory moves: each entry of ``b`` goes after
    every entry of ``a`` with a high word not above its own (stable: ``a`` first on ties)."""
    n = a_hi.size + b_hi.size
    at_b = np.searchsorted(a_hi, b_hi, side="right") + np.arange(b_hi.size)
    from_a = np.ones(n, dtype=bool)
    from_a[at_b] = False
    merged = []
    for a, b in ((a_hi, b_hi), (a_lo, b_lo), (a_fp, b_fp)):
        out = np.empty(n, dtype=a.dtype)
        out[at_b] = b
        out[from_a] = a
        merged.append(out)
    return merged[0], merged[1], merged[2]


class StoredFiles(Protocol):
    """Where lookups find ``raw``'s files: a batch's :class:`~streams.checkpoint.Checkpoint`
    (one pinned version), or the store itself outside a batch."""

    def files_overlapping(self, dataset: str, column: str, lo: object, hi: object) -> list[str]: ...


class EventWindow:
    """Stored event ids by UTC hour: recent hours in memory, older hours asked of storage.

    Storage is read through the ``files`` a lookup is given: the pipeline passes its batch's
    checkpoint, so a lookup never reads (or moves) any version but the one the batch pinned.
    """

    def __init__(self, store: Store, window_hours: int = 2):
        if window_hours < 1:
            raise ValueError("window_hours must be at least 1")
        self._store = store
        self._window = timedelta(hours=window_hours)
        self._hours: dict[datetime, HourIds] = {}
        self._newest: datetime | None = None

    @property
    def ids_held(self) -> int:
        """Ids held in memory now (the dedupe window's size, for metrics and benchmarks)."""
        return sum(h.size for h in self._hours.values())

    @property
    def hours_held(self) -> int:
        return len(self._hours)

    def clear(self) -> None:
        self._hours.clear()

    def seen_mask(self, interval_starts: pl.Series, event_ids: pl.Series) -> pl.Series:
        """``True`` where the id is already stored (row order preserved)."""
        frame = pl.DataFrame({"interval_start": interval_starts, "event_id": event_ids})
        return self.lookup(frame, pl.Series("fp", np.zeros(frame.height, dtype=np.uint64)))[0]

    def lookup(
        self, rows: pl.DataFrame, fingerprints: pl.Series, files: StoredFiles | None = None
    ) -> tuple[pl.Series, pl.Series]:
        """(stored, conflicting) per row of ``rows`` (``interval_start``, ``event_id``):
        ``conflicting`` where the stored copy of the id has other values (a fingerprint differs).
        Hours not held are read from ``files`` (default: the store's newest version)."""
        source: StoredFiles = files if files is not None else self._store
        n = rows.height
        seen = np.zeros(n, dtype=bool)
        conflict = np.zeros(n, dtype=bool)
        if n == 0:
            return pl.Series("seen", seen), pl.Series("conflicting", conflict)
        frame = pl.DataFrame(
            {"t": rows["interval_start"], "id": rows["event_id"], "fp": fingerprints}
        ).with_row_index("row").with_columns(hour=pl.col("t").dt.truncate("1h"))
        newest = frame["hour"].max()
        if self._newest is None or newest > self._newest:  # type: ignore[operator]
            self._newest = newest  # type: ignore[assignment]
            self._evict()
        for (hour,), part in frame.partition_by("hour", as_dict=True).items():
            index = part["row"].to_numpy()
            mine = part["fp"].to_numpy()
            if self._in_window(hour):
                hi, lo = id_words(part["id"])
                found, stored = self._hour(hour, source).lookup(hi, lo)
            else:
                stored_rows = self._stored_among(hour, part["id"], source)
                joined = part.select("id").join(stored_rows, left_on="id", right_on="event_id", how="left")
                found = joined["fp"].is_not_null().to_numpy()
                stored = joined["fp"].fill_null(0).to_numpy()
            seen[index] = found
            conflict[index] = found & (stored != mine) & (stored != 0) & (mine != 0)
        return pl.Series("seen", seen), pl.Series("conflicting", conflict)

    def add(self, interval_starts: pl.Series, event_ids: pl.Series, fingerprints: pl.Series | None = None) -> None:
        """Remember ids as stored (call only after their batch committed)."""
        if event_ids.len() == 0:
            return
        fps = fingerprints if fingerprints is not None else pl.Series("fp", np.zeros(event_ids.len(), dtype=np.uint64))
        frame = pl.DataFrame({"t": interval_starts, "id": event_ids, "fp": fps}).with_columns(
            hour=pl.col("t").dt.truncate("1h")
        )
        for (hour,), part in frame.partition_by("hour", as_dict=True).items():
            if hour in self._hours:  # an hour not held is loaded from storage when needed
                self._hours[hour].add(*id_words(part["id"]), part["fp"].to_numpy())

    # -- internals -------------------------------------------------------------------------
    def _in_window(self, hour: datetime) -> bool:
        return self._newest is not None and hour > self._newest - self._window

    def _evict(self) -> None:
        for hour in [h for h in self._hours if not self._in_window(h)]:
            del self._hours[hour]

    def _hour(self, hour: datetime, source: StoredFiles) -> HourIds:
        held = self._hours.get(hour)
        if held is None:
            held = HourIds()
            stored = self._scan_hour(hour, source).select("event_id", fingerprint()).collect()
            held.add(*id_words(stored["event_id"]), stored["fp"].to_numpy())
            self._hours[hour] = held
        return held

    def _stored_among(self, hour: datetime, event_ids: pl.Series, source: StoredFiles) -> pl.DataFrame:
        """(event_id, fp) of the stored rows among ``event_ids`` (only those are read)."""
        wanted = event_ids.unique().implode()
        return (
            self._scan_hour(hour, source)
            .filter(pl.col("event_id").is_in(wanted))
            .select("event_id", fingerprint())
            .unique(subset="event_id", keep="first")
            .collect()
        )

    def _scan_hour(self, hour: datetime, source: StoredFiles) -> pl.LazyFrame:
        """Rows of ``raw`` in one UTC hour: only files whose time range (from the log's
        statistics) touches the hour are opened, however many the day holds."""
        files = source.files_overlapping(RAW, "interval_start", hour, hour + _HOUR)
        return self._store.scan_files(files, RAW_EVENTS).filter(
            (pl.col("interval_start") >= hour) & (pl.col("interval_start") < hour + _HOUR)
        )
