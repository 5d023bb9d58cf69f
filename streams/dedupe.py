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

Memory is bounded by the load, never by history, and held in two tiers. The newest hour (until
the stream is ``filter_after_minutes`` past its end) is exact: two 64-bit words (the 128-bit id)
plus a 64-bit fingerprint of the event's values (a re-send with other values is a conflict, not a
duplicate), 24 bytes an id. Every older hour of the window is a filter of its ids
(:mod:`streams.idfilter`, 12 bits an id by default) that says "certainly new" or "maybe", and
a "maybe" is looked up in storage exactly as an hour outside the window is; ids stored after
the hour was frozen (late events) are kept exactly beside the filter. At national load (22.4M
ids an hour for a consumer that owns every partition) the two hours held cost ~0.51 GiB exact +
~0.03 GiB filtered instead of ~1.0 GiB (docs/BENCHMARKS.md, "The dedupe window at national
density"), and 1/N of it with N consumers.

Ids are added only after their batch committed (marking them first would lose them if the
write failed — openmeter#5118). :meth:`EventWindow.clear` forgets everything (the pipeline
calls it when a commit conflicted: another writer stored something this process did not see).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

import numpy as np
import polars as pl

from storage.dataset import Store
from storage.schemas import RAW_EVENTS
from storage.verified import verified_files
from streams.idfilter import IdFilter

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
    Invariant: every run's ``hi`` is non-decreasing; ``size`` is the number of entries held;
    a run longer than ``max_run_ids`` takes no further merges (it is at most about twice that).
    """

    runs: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)
    size: int = 0
    # no run is merged into one already this long: a merge's transient copy (24 bytes an id of
    # both runs) stays ~0.2 GiB at national density instead of a whole hour's (measured:
    # docs/BENCHMARKS.md, "The dedupe window at national density"); lookups ask ≤ ~12 runs more
    max_run_ids: int = 1 << 22

    def add(self, hi: np.ndarray, lo: np.ndarray, fp: np.ndarray | None = None) -> None:
        if hi.size == 0:
            return
        fp = np.zeros(hi.size, dtype=np.uint64) if fp is None else fp
        order = np.argsort(hi, kind="stable")
        self.runs.append((hi[order], lo[order], fp[order]))
        self.size += int(hi.size)
        # keep O(log n) runs, merging a run into the one before once it is half its size or
        # more (log-structured: each id is merged O(log n) times, not once per batch)
        while (
            len(self.runs) >= 2
            and 2 * self.runs[-1][0].size >= self.runs[-2][0].size
            and self.runs[-2][0].size < self.max_run_ids
        ):
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


class MaybeFilter(Protocol):
    """What a filtered hour asks first (:class:`~streams.idfilter.IdFilter`): ``False`` must be
    certain (the id was never built in); ``True`` is only "maybe"."""

    ids: int
    nbytes: int

    def maybe(self, hi: np.ndarray, lo: np.ndarray) -> np.ndarray: ...


@dataclass(slots=True)
class FilteredHour:
    """An hour of the window no longer the newest: a static filter of the ids it held when it
    was frozen, and the exact ids stored since (late events), which the filter cannot take.
    Invariant: every id the exact hour held, or this process stored since, answers "maybe" from
    ``filter`` or is in ``overflow``; a "maybe" alone is never a verdict."""

    filter: MaybeFilter
    overflow: HourIds = field(default_factory=HourIds)

    @classmethod
    def freeze(cls, held: HourIds, build_filter: Callable[[Iterator[tuple[np.ndarray, np.ndarray]], int], MaybeFilter]) -> FilteredHour:
        """A filter of every id of ``held`` (all its runs), emptying ``held``: each run is released
        once it is in the filter, so the hour is never held twice over (the peak is the runs
        plus the filter, no concatenated copy)."""
        runs, count = held.runs, held.size
        held.runs, held.size = [], 0

        def released_one_by_one() -> Iterator[tuple[np.ndarray, np.ndarray]]:
            while runs:
                hi, lo, _ = runs.pop()
                yield hi, lo

        return cls(build_filter(released_one_by_one(), count))

    @property
    def size(self) -> int:
        return self.filter.ids + self.overflow.size

    @property
    def nbytes(self) -> int:
        return self.filter.nbytes + 24 * self.overflow.size


@dataclass(slots=True)
class WindowStats:
    """Counters of the filtered tier, since the window was made (for benchmarks and metrics):
    ids asked of a filter, of those the "maybe"s (not in the overflow), and the storage scans
    (one per filtered hour and batch with at least one "maybe") that answered them."""

    filter_asked: int = 0
    filter_maybe: int = 0
    storage_scans: int = 0


class EventWindow:
    """Stored event ids by UTC hour: the newest hour(s) exact in memory, older hours of the
    window as a compact filter in front of storage, hours older than the window asked of storage.

    Tiers (docs/architecture.md, "The dedupe window at national density"):

    * **exact** (:class:`HourIds`, 24 bytes an id): an hour until the newest event seen is
      ``filter_after_minutes`` past the hour's end. Duplicates are common here (re-sends of the
      last minutes), and every answer is exact, with the value fingerprint.
    * **filtered** (:class:`FilteredHour`, ``filter_bits_per_id`` bits an id, 12 = 1.5 bytes):
      the rest of the window. "Certainly new" is final; an id the overflow holds is answered
      exactly; a "maybe" is looked up in storage for that hour and id only, through the batch's
      pinned checkpoint (files SHA-256 verified), which gives the verdict and the stored copy's
      fingerprint (a re-send with other values is still a conflict).
    * **storage**: hours older than the window, as the filtered tier's "maybe".

    Storage is read through the ``files`` a lookup is given: the pipeline passes its batch's
    checkpoint, so a lookup never reads (or moves) any version but the one the batch pinned.
    ``build_filter`` makes a filter from an hour's ``(hi, lo)`` ids, given in parts with their
    count (a parameter so tests can force false positives).
    """

    def __init__(
        self,
        store: Store,
        window_hours: int = 2,
        filter_after_minutes: int = 10,
        filter_bits_per_id: int = 12,
        build_filter: Callable[[Iterator[tuple[np.ndarray, np.ndarray]], int], MaybeFilter] | None = None,
    ):
        if window_hours < 1:
            raise ValueError("window_hours must be at least 1")
        if filter_after_minutes < 0:
            raise ValueError("filter_after_minutes must not be negative")
        self._store = store
        self._window = timedelta(hours=window_hours)
        self._exact_for = _HOUR + timedelta(minutes=filter_after_minutes)
        self._build_filter = build_filter or (lambda parts, count: IdFilter.build_from(parts, count, filter_bits_per_id))
        self._hours: dict[datetime, HourIds | FilteredHour] = {}
        self._newest: datetime | None = None  # the newest hour seen
        self._newest_start: datetime | None = None  # the newest interval_start seen
        self.stats = WindowStats()

    @property
    def ids_held(self) -> int:
        """Ids the window remembers now, in either tier (for metrics and benchmarks)."""
        return sum(h.size for h in self._hours.values())

    @property
    def bytes_held(self) -> int:
        """Bytes of the window's arrays: 24 an exact id, the filters' bit arrays."""
        return sum(24 * h.size if isinstance(h, HourIds) else h.nbytes for h in self._hours.values())

    @property
    def hours_held(self) -> int:
        return len(self._hours)

    @property
    def hours_filtered(self) -> int:
        return sum(isinstance(h, FilteredHour) for h in self._hours.values())

    def clear(self) -> None:
        """Forget every hour, exact and filtered (reloaded from storage when next touched)."""
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
        Hours not held, and a filtered hour's "maybe"s, are read from ``files`` (default: the
        store's newest version)."""
        source: StoredFiles = files if files is not None else self._store
        n = rows.height
        seen = np.zeros(n, dtype=bool)
        conflict = np.zeros(n, dtype=bool)
        if n == 0:
            return pl.Series("seen", seen), pl.Series("conflicting", conflict)
        frame = pl.DataFrame(
            {"t": rows["interval_start"], "id": rows["event_id"], "fp": fingerprints}
        ).with_row_index("row").with_columns(hour=pl.col("t").dt.truncate("1h"))
        newest, newest_start = frame["hour"].max(), frame["t"].max()
        if self._newest_start is None or newest_start > self._newest_start:  # type: ignore[operator]
            self._newest_start = newest_start  # type: ignore[assignment]
        if self._newest is None or newest > self._newest:  # type: ignore[operator]
            self._newest = newest  # type: ignore[assignment]
            self._evict()
        self._freeze_due()
        for (hour,), part in frame.partition_by("hour", as_dict=True).items():
            index = part["row"].to_numpy()
            mine = part["fp"].to_numpy()
            if self._in_window(hour):
                hi, lo = id_words(part["id"])
                if self._filtered(hour):
                    found, stored = self._filtered_lookup(hour, part["id"], hi, lo, source)
                else:
                    held = self._hours.get(hour)
                    exact = held if isinstance(held, HourIds) else self._load_exact(hour, source)
                    found, stored = exact.lookup(hi, lo)
            else:
                found, stored = self._storage_lookup(hour, part["id"], source)
            seen[index] = found
            conflict[index] = found & (stored != mine) & (stored != 0) & (mine != 0)
        return pl.Series("seen", seen), pl.Series("conflicting", conflict)

    def add(self, interval_starts: pl.Series, event_ids: pl.Series, fingerprints: pl.Series | None = None) -> None:
        """Remember ids as stored (call only after their batch committed). A filtered hour
        takes them in its exact overflow; an hour not held is loaded from storage when needed."""
        if event_ids.len() == 0:
            return
        fps = fingerprints if fingerprints is not None else pl.Series("fp", np.zeros(event_ids.len(), dtype=np.uint64))
        frame = pl.DataFrame({"t": interval_starts, "id": event_ids, "fp": fps}).with_columns(
            hour=pl.col("t").dt.truncate("1h")
        )
        for (hour,), part in frame.partition_by("hour", as_dict=True).items():
            held = self._hours.get(hour)
            if isinstance(held, FilteredHour):
                held.overflow.add(*id_words(part["id"]), part["fp"].to_numpy())
            elif held is not None:
                held.add(*id_words(part["id"]), part["fp"].to_numpy())

    # -- internals -------------------------------------------------------------------------
    def _in_window(self, hour: datetime) -> bool:
        return self._newest is not None and hour > self._newest - self._window

    def _filtered(self, hour: datetime) -> bool:
        """Is the hour past the exact tier: the newest event is ``filter_after_minutes`` past its end?"""
        return self._newest_start is not None and self._newest_start >= hour + self._exact_for

    def _evict(self) -> None:
        for hour in [h for h in self._hours if not self._in_window(h)]:
            del self._hours[hour]

    def _freeze_due(self) -> None:
        """Replace each exact hour now past the exact tier by a filter of its ids."""
        for hour in [h for h, held in self._hours.items() if isinstance(held, HourIds) and self._filtered(h)]:
            self._hours[hour] = FilteredHour.freeze(self._hours[hour], self._build_filter)  # type: ignore[arg-type]

    def _load_exact(self, hour: datetime, source: StoredFiles) -> HourIds:
        held = HourIds()
        stored = self._scan_hour(hour, source).select("event_id", fingerprint()).collect()
        held.add(*id_words(stored["event_id"]), stored["fp"].to_numpy())
        self._hours[hour] = held
        return held

    def _filtered_lookup(
        self, hour: datetime, event_ids: pl.Series, hi: np.ndarray, lo: np.ndarray, source: StoredFiles
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact answers for a filtered hour: the overflow's, then storage's for every "maybe"."""
        held = self._hours.get(hour)
        if not isinstance(held, FilteredHour):  # first touch: straight from storage's ids into a filter
            stored = self._scan_hour(hour, source).select("event_id").collect()
            held = FilteredHour(self._build_filter(iter([id_words(stored["event_id"])]), stored.height))
            del stored
            self._hours[hour] = held
        found, fps = held.overflow.lookup(hi, lo)
        ask = ~found
        ask[ask] = held.filter.maybe(hi[ask], lo[ask])
        self.stats.filter_asked += int((~found).sum())
        self.stats.filter_maybe += int(ask.sum())
        if ask.any():
            self.stats.storage_scans += 1
            in_storage, stored_fps = self._storage_lookup(hour, event_ids.filter(pl.Series(ask)), source)
            found[ask] = in_storage
            fps[ask] = stored_fps
        return found, fps

    def _storage_lookup(self, hour: datetime, event_ids: pl.Series, source: StoredFiles) -> tuple[np.ndarray, np.ndarray]:
        """(found, stored fingerprint) of each id of ``event_ids`` in ``raw``'s hour."""
        stored_rows = self._stored_among(hour, event_ids, source)
        joined = pl.DataFrame({"id": event_ids}).join(stored_rows, left_on="id", right_on="event_id", how="left")
        return joined["fp"].is_not_null().to_numpy(), joined["fp"].fill_null(0).to_numpy()

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
        files = verified_files(self._store, RAW, files)  # invariant 9: SHA-256 as committed, or stop
        return self._store.scan_files(files, RAW_EVENTS).filter(
            (pl.col("interval_start") >= hour) & (pl.col("interval_start") < hour + _HOUR)
        )
