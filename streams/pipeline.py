"""One micro-batch from bytes to committed Parquet: decode → validate → dedupe → write.

:class:`BatchProcessor` is the whole consumer minus the bus: the stream consumer, ``quarantine
replay`` and the tests all go through it. A batch's refused rows are committed to the
``quarantine`` table, then its accepted rows to the ``raw`` table (two Delta commits,
:mod:`storage.delta`). When the messages come with bus positions, each commit records, per
bus partition, the last offset it covers (``txn``: app id ``<group>/<topic>/<partition>``).
That makes the sink exactly-once per partition whatever the bus or the process remembers:

* a message at or below ``raw``'s recorded offset is skipped whole (both of its tables hold it:
  quarantine is committed first);
* a refused row of a message at or below ``quarantine``'s recorded offset is not written again
  (a crash between the two commits);
* two members writing one partition (a zombie after a rebalance) cannot both commit: the
  second commit conflicts, and the batch is re-filtered against what the winner stored.

Re-sends of an event in a new message (a collector's spool, a second ``ingest``) are dropped
by id (:class:`~streams.dedupe.EventWindow`). ``usage_hourly`` is not written here: it is rolled
up from ``raw`` (:mod:`storage.rollup`), one row per hour × device × owner.

Invariants (docs/architecture.md 1 and 4): an event id is stored once however often it is
delivered; every refused line is stored in ``quarantine/`` with its reason.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
from collections.abc import Mapping, Sequence

import polars as pl

from storage.dataset import CommitConflict, Store
from streams.aggregate import KST_OFFSET, to_raw
from streams.checkpoint import Checkpoints
from streams.dedupe import EventWindow, fingerprint
from streams.schema import RefusalReason
from streams.validate import Accounts, Refused, check_rules, decode_messages, line_id

RAW = "raw"
QUARANTINE = "quarantine"
log = logging.getLogger(__name__)
_MESSAGE_OF_ROW = re.compile(r"#\d+$")


@dataclasses.dataclass(frozen=True, slots=True)
class Position:
    """Where a message sits on the bus: ``stream`` = ``<group>/<topic>/<partition>``, its offset."""

    stream: str
    offset: int


@dataclasses.dataclass(frozen=True, slots=True)
class BatchResult:
    """What one batch did. ``refused_lines`` are the quarantine rows, for the bus's quarantine topic.

    ``replayed`` counts messages skipped because storage already holds them (by offset)."""

    messages: int
    accepted: int
    refused: int
    duplicates: int
    batch_id: str | None
    refused_lines: tuple[Refused, ...] = ()
    replayed: int = 0


class BatchProcessor:
    """Turns messages of usage events into committed Parquet rows, exactly once."""

    def __init__(
        self,
        store: Store,
        accounts: Accounts,
        seen: EventWindow | None = None,
        *,
        max_conflicts: int = 20,
    ):
        self._store = store
        self._accounts = accounts
        self._seen = seen or EventWindow(store)
        self._max_conflicts = max_conflicts
        self._checkpoints = Checkpoints(store, (RAW, QUARANTINE))
        self.conflicts = 0  # commits that lost to another writer (a moved partition), for metrics

    @property
    def window(self) -> EventWindow:
        return self._seen

    def stored_offsets(self, streams: Sequence[str]) -> dict[str, int]:
        """Per stream, the last offset ``raw`` holds (absent: nothing stored yet): where a
        member that is assigned a partition resumes."""
        return self._checkpoints.open().stored_offsets(streams)

    def process(
        self, messages: Sequence[tuple[str, bytes]], positions: Sequence[Position] | None = None
    ) -> BatchResult:
        """Process ``(source, payload)`` messages; returns once everything is durably written.

        ``positions`` (one per message) make the write exactly-once per bus partition; without
        them (a file, a quarantine replay) dedupe by id alone applies.
        """
        if positions is not None and len(positions) != len(messages):
            raise ValueError("one position per message")
        for attempt in range(self._max_conflicts + 1):
            try:
                return self._process_once(messages, positions)
            except CommitConflict:
                # someone else committed to a partition of this batch after the version it
                # pinned (the partition moved): what we remember may be stale; filter again
                # from a new checkpoint, with the in-memory ids forgotten
                self.conflicts += 1
                log.warning(
                    "commit conflict: another member committed a partition of this batch after the version it "
                    "read (the partition moved); filtering the batch again from storage's offsets"
                )
                self._seen.clear()
                if attempt == self._max_conflicts:
                    raise
        raise AssertionError("unreachable")

    def _process_once(
        self, messages: Sequence[tuple[str, bytes]], positions: Sequence[Position] | None
    ) -> BatchResult:
        # one pinned version of raw and quarantine for the whole batch: the offsets, every
        # dedupe lookup and both commits (docs/architecture.md, invariant 7)
        checkpoint = self._checkpoints.open()
        txns: dict[str, int] = {}
        quarantine_done: dict[str, int] = {}
        by_source: dict[str, Position] = {}
        kept = list(messages)
        if positions is not None:
            streams = sorted({p.stream for p in positions})
            raw_done = checkpoint.stored_offsets(streams, RAW)
            quarantine_done = checkpoint.stored_offsets(streams, QUARANTINE)
            kept = []
            for message, position in zip(messages, positions, strict=True):
                txns[position.stream] = max(txns.get(position.stream, -1), position.offset)
                done = raw_done.get(position.stream)
                if done is None or position.offset > done:
                    kept.append(message)
                    by_source[message[0]] = position
        replayed = len(messages) - len(kept)

        frame, early = decode_messages(kept)
        checked = check_rules(frame, self._accounts)
        valid = checked.filter(pl.col("reason_code").is_null())
        invalid = checked.filter(pl.col("reason_code").is_not_null())

        raw = to_raw(valid).with_columns(fingerprint())
        conflicts_in_batch = raw.head(0)
        if raw["event_id"].n_unique() == raw.height:  # the common case, a tenth of unique()'s time
            unique = raw
        else:
            unique = raw.unique(subset="event_id", keep="first", maintain_order=True)
            kept = unique.select("event_id", kept_fp="fp")
            conflicts_in_batch = (
                raw.join(kept, on="event_id").filter(pl.col("fp") != pl.col("kept_fp")).drop("kept_fp")
                .unique(subset=["event_id", "fp"], keep="first", maintain_order=True)
            )
        seen, conflicting = self._seen.lookup(unique, unique["fp"], checkpoint)
        fresh = unique.filter(~seen)
        conflicts = pl.concat([unique.filter(seen & conflicting), conflicts_in_batch])
        fresh = fresh.sort(pl.col("interval_start"), _ID_PREFIX, maintain_order=True)
        duplicates = raw.height - fresh.height - conflicts.height

        quarantine = self._quarantine_rows(pl.concat([invalid, _as_conflicts(conflicts, invalid)], how="diagonal_relaxed"), early)
        quarantine = quarantine.unique(subset="quarantine_id", keep="first", maintain_order=True)
        if quarantine_done:
            quarantine = quarantine.filter(
                ~pl.Series(_already_in(quarantine["source"], by_source, quarantine_done), dtype=pl.Boolean())
            )

        batch_id = _batch_id(fresh["event_id"], quarantine["quarantine_id"])
        if quarantine.height:
            files = self._store.write_files(QUARANTINE, quarantine, batch_id or "empty")
            checkpoint.commit(QUARANTINE, files, txns)
        if fresh.height or txns:
            files = self._store.write_files(RAW, fresh, batch_id or "empty")
            checkpoint.commit(RAW, files, txns)
        self._seen.add(fresh["interval_start"], fresh["event_id"], fresh["fp"])
        refused_lines = tuple(
            Refused(s, r, c, m)
            for s, r, c, m in quarantine.select("source", "raw", "reason_code", "reason").iter_rows()
        )
        return BatchResult(
            messages=len(messages),
            accepted=fresh.height,
            refused=invalid.height + len(early) + conflicts.height,
            duplicates=duplicates,
            batch_id=batch_id,
            refused_lines=refused_lines,
            replayed=replayed,
        )

    def _quarantine_rows(self, invalid: pl.DataFrame, early: list[Refused]) -> pl.DataFrame:
        rows = invalid.with_columns(raw=_raw_text(invalid)).select(
            period=pl.coalesce(
                (pl.col("_interval_start") + KST_OFFSET).dt.strftime("%Y-%m"), pl.lit("unknown")
            ),
            reason_code=pl.col("reason_code"),
            reason=pl.col("reason"),
            source=pl.col("_source"),
            raw=pl.col("raw"),
            event_id=pl.col("event_id"),
            entity=pl.col("entity"),
            project=pl.col("project"),
            gpu_model=pl.col("gpu_model"),
            interval_start=pl.col("_interval_start"),
            gpu_microseconds=pl.when(pl.col("gpu_seconds").is_finite())
            .then((pl.col("gpu_seconds") * 1_000_000).round(0, mode="half_to_even"))
            .cast(pl.Int64, strict=False),
        )
        early_rows = pl.DataFrame(
            {
                "period": ["unknown"] * len(early),
                "reason_code": [str(r.reason_code) for r in early],
                "reason": [r.reason for r in early],
                "source": [r.source for r in early],
                "raw": [r.raw for r in early],
            },
            schema={n: pl.String() for n in ("period", "reason_code", "reason", "source", "raw")},
        )
        combined = pl.concat([rows, early_rows], how="diagonal_relaxed")
        return combined.with_columns(
            quarantine_id=pl.Series([line_id(r) for r in combined["raw"]], dtype=pl.String())
        )


def _raw_text(invalid: pl.DataFrame) -> pl.Series:
    """The original line of each invalid row: kept from the slow path, else re-encoded.

    Rows of the fast path were well-formed JSON of the wire schema; re-encoding them keeps
    every field the contract defines (unknown extra fields are not part of the contract).
    """
    if invalid.height == 0:
        return pl.Series("raw", [], dtype=pl.String())
    from streams.validate import WIRE_SCHEMA

    encoded = invalid.select(list(WIRE_SCHEMA)).select(
        pl.struct(pl.all()).struct.json_encode().alias("raw")
    )["raw"]
    return invalid["_raw"].fill_null(encoded)


# Raw rows are stored in time order, then by event id. The first 64 bits of the id order
# them as well as the whole string does (two ids of one interval sharing 64 bits is a 2^-64
# event; they would keep their arrival order) at a third of the cost of a string sort.
_ID_PREFIX = pl.col("event_id").str.slice(0, 16).str.to_integer(base=16, dtype=pl.UInt64(), strict=False)


def _batch_id(event_ids: pl.Series, quarantine_ids: pl.Series) -> str | None:
    """Content-derived id: the same new rows always make the same file names.

    ``event_ids`` come in the order the raw rows are stored (time, then id: a function of the
    set of ids, so no second sort); quarantine ids are sorted here. BLAKE2b, because this id
    names files and is not part of the audit chain, which hashes the files with SHA-256.
    """
    if event_ids.len() == 0 and quarantine_ids.len() == 0:
        return None
    parts = (event_ids, quarantine_ids.sort())
    text = "\x1e".join(ids.cast(pl.String()).str.join("\n").item() for ids in parts)
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


def _as_conflicts(conflicts: pl.DataFrame, invalid: pl.DataFrame) -> pl.DataFrame:
    """Copies of a stored event_id with other values, as quarantine input rows: refused as
    ``conflicting_duplicate`` with a pointer to where the stored copy lives; never billed."""
    if conflicts.height == 0:
        return invalid.head(0)
    where = pl.format("raw/period={}/date={}", pl.col("period"), pl.col("date"))
    return conflicts.with_columns(
        reason_code=pl.lit(str(RefusalReason.CONFLICTING_DUPLICATE)),
        reason=pl.format(
            "event_id {} was stored before with other values (the stored copy is in {}); this copy is kept here and not billed",
            pl.col("event_id"), where,
        ),
    ).select([c for c in invalid.columns if c in conflicts.columns or c in ("reason_code", "reason")])


def _already_in(sources: pl.Series, by_source: Mapping[str, Position], done: Mapping[str, int]) -> list[bool]:
    """For each quarantine row: does the quarantine table already hold its message?"""
    out = []
    for source in sources.to_list():
        position = by_source.get(_MESSAGE_OF_ROW.sub("", source or ""))
        if position is None:
            position = by_source.get(source or "")
        stored = done.get(position.stream) if position is not None else None
        out.append(stored is not None and position is not None and position.offset <= stored)
    return out
