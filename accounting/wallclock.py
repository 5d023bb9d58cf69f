"""Invariant 2 in billing: no physical GPU is billed for more time than the wall clock.

Over-reported GPU time (three half-GPU MIG slices in one minute, a whole GPU beside its own
slice, one ``gpu_uuid`` reported by two nodes) is accepted by the consumer, because each event
is valid alone. The close caps it before pricing, in two steps, per physical GPU
(``gpu_uuid``):

1. **interval** (from ``raw/``): the events of one GPU and one ``interval_start`` together may
   hold at most the interval's length (latest ``interval_end`` − ``interval_start``);
2. **hour** (from ``usage_hourly/``, what is left after step 1): one GPU-hour holds at most
   3,600,000,000 µs.

Each event's seconds were rounded once to whole microseconds, so honest claims may exceed the
wall clock by up to one microsecond per event (seven 1/7 MIG slices: 7 × 8,571,429 µs in a
minute): that much slack is allowed and never taken off. Beyond it, the wall clock is shared among the claims **in proportion to what each
reported**, exactly in integer microseconds: each claim gets ``⌊claim × cap / total⌋`` and the
microseconds left over go one each to the largest remainders (ties broken by the claim's
name: event id, or entity/project/model), so the shares add up to the cap exactly and the
result does not depend on row order. Busy time is scaled by the same factor (floored), so
``busy ≤ gpu`` still holds. What is taken off is neither billed nor counted as reported, and
the compliance ledger names ``gpu_oversubscribed`` for every entity × GPU model that had a
part in such a GPU-hour (``oversubscribed_gpu_hours`` counts them).

Only GPU-hours with more than one device (``node`` × ``device_uuid``) or more than an hour of
usage can break the rule (one device's events of one interval share an event id), so only
those are looked at: with many MIG GPUs the close scans their ``raw/`` rows (streaming, in
Polars), and only the rows of intervals and hours actually over the wall clock come here.
Intervals of one GPU are taken to be aligned to one length; overlapping intervals of
different lengths starting at different times are not compared with each other (step 2
still bounds them by the hour).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import polars as pl

MICROSECONDS_PER_HOUR = 3_600_000_000

Owner = tuple[str, str, str]  # entity, project, gpu_model


def share(cap: int, amounts: Sequence[int], names: Sequence[str], slack: int = 0) -> list[int]:
    """``amounts`` scaled down to sum to exactly ``cap`` (largest remainder); unchanged if they
    fit within ``cap + slack``."""
    total = sum(amounts)
    if total <= cap + slack:
        return list(amounts)
    shares = [amount * cap // total for amount in amounts]
    remainders = [amount * cap % total for amount in amounts]
    ranked = sorted(range(len(amounts)), key=lambda i: (-remainders[i], names[i]))
    for i in ranked[: cap - sum(shares)]:
        shares[i] += 1
    return shares


def _scaled_busy(busy: int, gpu: int, kept: int) -> int:
    return busy * kept // gpu if gpu else 0


def cap_gpu_hours(hourly: pl.DataFrame, raw: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """GPU-time to take off, per owner-hour, and the breach count per entity × GPU model.

    ``hourly``: the candidate GPU-hours' usage per ``gpu_uuid`` × ``hour_start`` × entity ×
    project × GPU model (``gpu_microseconds``, ``busy_gpu_microseconds``). ``raw``: their
    events (``event_id``, ``gpu_uuid``, ``hour_start``, ``interval_start``, ``interval_end``,
    owner columns, usage); may be empty. Returns ``(excess, oversubscribed)``: excess per
    ``hour_start`` × entity × project × GPU model, and ``oversubscribed_gpu_hours`` per
    entity × GPU model.
    """
    interval_excess = _interval_excess(raw)
    claims: dict[tuple[str, object], dict[Owner, list[int]]] = defaultdict(dict)
    events: dict[tuple[str, object], int] = defaultdict(int)
    for row in hourly.iter_rows(named=True):
        owner = (row["entity"], row["project"], row["gpu_model"])
        claims[(row["gpu_uuid"], row["hour_start"])][owner] = [row["gpu_microseconds"], row["busy_gpu_microseconds"]]
        events[(row["gpu_uuid"], row["hour_start"])] += row["events"]

    excess: dict[tuple[object, Owner], list[int]] = defaultdict(lambda: [0, 0])
    breached: dict[tuple[str, str], int] = defaultdict(int)
    for gpu_hour, owners in sorted(claims.items(), key=lambda item: (item[0][0], item[0][1])):
        hour = gpu_hour[1]
        taken = interval_excess.get(gpu_hour, {})
        after = {o: [g - taken.get(o, (0, 0))[0], b - taken.get(o, (0, 0))[1]] for o, (g, b) in owners.items()}
        names = sorted(after)
        kept = share(
            MICROSECONDS_PER_HOUR, [max(after[o][0], 0) for o in names], ["/".join(o) for o in names], events[gpu_hour]
        )
        over = bool(taken)
        for owner, keep in zip(names, kept, strict=True):
            gpu, busy = after[owner]
            cut_gpu = max(gpu - keep, 0)
            cut_busy = busy - _scaled_busy(busy, gpu, keep) if cut_gpu else 0
            over = over or cut_gpu > 0
            total = excess[(hour, owner)]
            total[0] += taken.get(owner, (0, 0))[0] + cut_gpu
            total[1] += taken.get(owner, (0, 0))[1] + cut_busy
        if over:
            for entity, model in {(o[0], o[2]) for o in owners}:
                breached[(entity, model)] += 1

    excess_frame = pl.DataFrame(
        [
            {"hour_start": hour, "entity": o[0], "project": o[1], "gpu_model": o[2],
             "gpu_microseconds": g, "busy_gpu_microseconds": b}
            for (hour, o), (g, b) in sorted(excess.items(), key=lambda item: (item[0][0], item[0][1]))
            if g or b
        ],
        schema=OWNER_SCHEMA,
    )
    over_frame = pl.DataFrame(
        [{"entity": e, "gpu_model": m, "oversubscribed_gpu_hours": n} for (e, m), n in sorted(breached.items())],
        schema=OVER_SCHEMA,
    )
    return excess_frame, over_frame


def _interval_excess(raw: pl.DataFrame) -> dict[tuple[str, object], dict[Owner, tuple[int, int]]]:
    """Per GPU-hour and owner, the GPU-time (and busy time) over the wall clock of its intervals."""
    events: dict[tuple[str, object], list[dict]] = defaultdict(list)
    for row in raw.iter_rows(named=True):
        events[(row["gpu_uuid"], row["interval_start"])].append(row)
    out: dict[tuple[str, object], dict[Owner, tuple[int, int]]] = defaultdict(dict)
    for (_, start), group in events.items():
        wall = max(int((r["interval_end"] - start).total_seconds() * 1_000_000) for r in group)
        group.sort(key=lambda r: r["event_id"])
        kept = share(wall, [r["gpu_microseconds"] for r in group], [r["event_id"] for r in group], len(group))
        for row, keep in zip(group, kept, strict=True):
            cut = row["gpu_microseconds"] - keep
            if not cut:
                continue
            cut_busy = row["busy_gpu_microseconds"] - _scaled_busy(row["busy_gpu_microseconds"], row["gpu_microseconds"], keep)
            owner = (row["entity"], row["project"], row["gpu_model"])
            slot = out[(row["gpu_uuid"], row["hour_start"])]
            before = slot.get(owner, (0, 0))
            slot[owner] = (before[0] + cut, before[1] + cut_busy)
    return out


OWNER_SCHEMA = {
    "hour_start": pl.Datetime("us", "UTC"),
    "entity": pl.String,
    "project": pl.String,
    "gpu_model": pl.String,
    "gpu_microseconds": pl.Int64,
    "busy_gpu_microseconds": pl.Int64,
}
OVER_SCHEMA = {"entity": pl.String, "gpu_model": pl.String, "oversubscribed_gpu_hours": pl.Int64}
