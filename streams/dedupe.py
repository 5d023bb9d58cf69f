"""Which event ids are already stored: the consumer's memory against double counting.

The source of truth is ``raw/``: an event id is *seen* once the batch that holds it has
committed (see ``storage.dataset.Transaction``). The index loads the ids of a KST date from
``raw/period=…/date=…`` the first time a batch touches that date and keeps the most recently
used dates in memory; ids are added only *after* their batch committed (marking them seen
before the write would lose them if the write failed — openmeter#5118).

Quarantine has its own index (``quarantine_id``, the hash of a refused line), so a replayed
poison message is kept once.
"""

from __future__ import annotations

from collections import OrderedDict

import polars as pl

from storage.dataset import Store

RAW = "raw"
QUARANTINE = "quarantine"


class SeenIndex:
    """Event ids already committed, per KST date, loaded lazily from ``raw/``."""

    def __init__(self, store: Store, max_dates: int = 62):
        self._store = store
        self._max_dates = max_dates
        self._dates: OrderedDict[str, set[str]] = OrderedDict()
        self._quarantine: set[str] | None = None

    def _date(self, date: str) -> set[str]:
        ids = self._dates.get(date)
        if ids is None:
            ids = self._load(date)
            self._dates[date] = ids
            while len(self._dates) > self._max_dates:
                self._dates.popitem(last=False)
        self._dates.move_to_end(date)
        return ids

    def _load(self, date: str, attempts: int = 5) -> set[str]:
        """Ids stored for ``date``; re-lists when compaction replaced a file between list and read."""
        for attempt in range(attempts):
            files = [p for p in self._store.files(RAW) if f"/date={date}/" in p]
            if not files:
                return set()
            try:
                return set(pl.read_parquet(files, columns=["event_id"])["event_id"].to_list())
            except FileNotFoundError:
                if attempt == attempts - 1:
                    raise
        return set()

    def seen_mask(self, dates: pl.Series, event_ids: pl.Series) -> pl.Series:
        """``True`` where the id is already stored for its date (row order preserved)."""
        if dates.len() == 0:
            return pl.Series("seen", [], dtype=pl.Boolean())
        if dates.n_unique() == 1:  # the common case: a live batch lies in one KST date
            return self._seen_on(dates[0], event_ids)
        frame = pl.DataFrame({"date": dates, "event_id": event_ids}).with_row_index("row")
        parts = []
        for (date,), part in frame.partition_by("date", as_dict=True).items():
            parts.append(part.select("row").with_columns(self._seen_on(date, part["event_id"])))
        return pl.concat(parts).sort("row")["seen"]

    def _seen_on(self, date: str, event_ids: pl.Series) -> pl.Series:
        ids = self._date(date)
        batch = event_ids.to_list()
        if ids.isdisjoint(batch):  # nothing seen: one pass in C, no per-row Python
            return pl.Series("seen", [False] * len(batch), dtype=pl.Boolean())
        return pl.Series("seen", [e in ids for e in batch], dtype=pl.Boolean())

    def add(self, dates: pl.Series, event_ids: pl.Series) -> None:
        """Mark ids as stored (call only after their batch committed)."""
        if dates.len() and dates.n_unique() == 1:
            self._date(dates[0]).update(event_ids.to_list())
            return
        frame = pl.DataFrame({"date": dates, "event_id": event_ids})
        for (date,), part in frame.partition_by("date", as_dict=True).items():
            self._date(date).update(part["event_id"].to_list())

    def quarantine_ids(self) -> set[str]:
        if self._quarantine is None:
            files = self._store.files(QUARANTINE)
            self._quarantine = (
                set(pl.read_parquet(files, columns=["quarantine_id"])["quarantine_id"].to_list())
                if files
                else set()
            )
        return self._quarantine
