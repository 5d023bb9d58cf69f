"""Given-helpers for the accounting tests: write consumer datasets exactly as the consumer does.

Rows go through ``Store.write_files`` + ``Store.commit_files`` with the declared schemas of
``storage.schemas`` (the stream consumer writes exactly those); ledgers are read back with
DuckDB, an independent reader.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import duckdb
import polars as pl

from storage.dataset import Store
from storage.schemas import (
    QUARANTINE,
    RAW_EVENTS,
    USAGE_HOURLY,
)

HOUR_US = 3_600_000_000
SAMPLE_REGISTRY = Path(__file__).resolve().parents[2] / "examples" / "registry.toml"


def utc(text: str) -> datetime:
    """``"2026-11-30T15:00"`` → aware UTC instant."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def kst(moment: datetime) -> datetime:
    return moment + timedelta(hours=9)


def usage(
    hour: str,
    entity: str,
    project: str,
    gpu_model: str,
    gpu_uuid: str,
    *,
    gpu_us: int = HOUR_US,
    busy_us: int | None = None,
    device_uuid: str | None = None,
    fraction: float = 1.0,
    mig_profile: str | None = None,
    node: str = "node-01",
) -> dict:
    """One ``usage_hourly`` row for the UTC hour starting at ``hour``."""
    start = utc(hour)
    return {
        "period": kst(start).strftime("%Y-%m"),
        "date": kst(start).strftime("%Y-%m-%d"),
        "hour_start": start,
        "site": "site-a",
        "node": node,
        "entity": entity,
        "project": project,
        "job_id": None,
        "gpu_uuid": gpu_uuid,
        "device_uuid": device_uuid or gpu_uuid,
        "gpu_model": gpu_model,
        "mig_profile": mig_profile,
        "gpu_fraction": fraction,
        "gpu_microseconds": gpu_us,
        "busy_gpu_microseconds": gpu_us if busy_us is None else busy_us,
        "energy_joules": None,
        "events": 60,
        "partial_events": 0,
        "samples": 360,
        "expected_samples": 360,
    }


def hours(start: str, count: int, **fields) -> list[dict]:
    """``count`` consecutive hourly rows from ``start`` with the same owner and device."""
    first = utc(start)
    args = {k: fields.pop(k) for k in ("entity", "project", "gpu_model", "gpu_uuid")}
    return [
        usage((first + timedelta(hours=i)).strftime("%Y-%m-%dT%H:%M"), **args, **fields) for i in range(count)
    ]


def write_usage(store: Store, rows: list[dict], batch: str) -> None:
    frame = pl.from_dicts(rows, schema=pl.from_arrow(USAGE_HOURLY.empty_table()).schema)
    store.commit_files("usage_hourly", store.write_files("usage_hourly", frame, batch))


def quarantined(
    interval_start: str,
    reason_code: str,
    entity: str,
    project: str,
    gpu_model: str,
    *,
    gpu_us: int,
    event_id: str,
) -> dict:
    start = utc(interval_start)
    raw = f'{{"event_id": "{event_id}", "entity": "{entity}", "project": "{project}"}}'
    return {
        "period": kst(start).strftime("%Y-%m"),
        "quarantine_id": hashlib.sha256(raw.encode()).hexdigest()[:32],
        "reason_code": reason_code,
        "reason": f"{reason_code}: {entity}/{project}",
        "source": "events.jsonl:1",
        "raw": raw,
        "event_id": event_id,
        "entity": entity,
        "project": project,
        "gpu_model": gpu_model,
        "interval_start": start,
        "gpu_microseconds": gpu_us,
    }


def write_quarantine(store: Store, rows: list[dict], batch: str) -> None:
    schema = pl.from_arrow(QUARANTINE.empty_table()).schema
    frame = pl.from_dicts([{k: r.get(k) for k in schema} for r in rows], schema=schema)
    store.commit_files("quarantine", store.write_files("quarantine", frame, batch))


def write_raw_ids(store: Store, interval_start: str, event_ids: list[str], batch: str) -> None:
    """Minimal ``raw/`` rows carrying ``event_ids`` (what a quarantine replay leaves behind)."""
    start = utc(interval_start)
    schema = pl.from_arrow(RAW_EVENTS.empty_table()).schema
    rows = []
    for eid in event_ids:
        row = {name: None for name in schema}
        row.update(
            period=kst(start).strftime("%Y-%m"),
            date=kst(start).strftime("%Y-%m-%d"),
            event_id=eid,
            interval_start=start,
            interval_end=start + timedelta(minutes=1),
            flags=[],
        )
        rows.append(row)
    store.commit_files("raw", store.write_files("raw", pl.from_dicts(rows, schema=schema), batch))


def ledger(store: Store, kind: str, period: str, where: str = "true") -> list[dict]:
    """Rows of a ledger file read back with DuckDB (an independent reader), as dicts."""
    path = store.path("ledgers", kind, f"period={period}", f"{kind}.parquet")
    con = duckdb.connect()
    try:
        cur = con.execute(f"select * from read_parquet('{path}') where {where}")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
    finally:
        con.close()


def total(rows: list[dict], column: str) -> Decimal:
    return sum((Decimal(r[column]) for r in rows), Decimal(0))


# A small registry for golden months: two GPUs per pool so every figure can be worked by hand.
# gov's B200 rate changes on 2026-11-16 (KST): 4000 → 4200 KRW per GPU-hour, 50 % off for
# universities and 30 % off for start-ups.
GOLDEN_REGISTRY = """
[billing]
rounding = "truncate"

[compliance]
under_use_below = 0.30
low_coverage_below = 0.90

[entities.gov]
state_pool = true
[[entities.gov.allocations]]
gpu_model = "NVIDIA B200"
count = 2
effective_from = 2026-01-01

[entities.samsung]
[[entities.samsung.allocations]]
gpu_model = "NVIDIA B200"
count = 2
effective_from = 2026-01-01

[projects.snu-llm]
entity = "gov"
class = "university"

[projects.upstage-pretrain]
entity = "gov"
class = "startup"

[projects.samsung-foundry-ai]
entity = "samsung"

[[rates]]
entity = "gov"
gpu_model = "NVIDIA B200"
krw_per_gpu_hour = 4000
effective_from = 2026-01-01
effective_to = 2026-11-15
discounts = { university = 50, startup = 30 }

[[rates]]
entity = "gov"
gpu_model = "NVIDIA B200"
krw_per_gpu_hour = 4200
effective_from = 2026-11-16
discounts = { university = 50, startup = 30 }

[[rates]]
entity = "samsung"
gpu_model = "NVIDIA B200"
krw_per_gpu_hour = 4500
effective_from = 2026-01-01
"""


def golden_registry(rounding: str = "truncate"):
    from accounting.registry import loads_registry

    text = GOLDEN_REGISTRY.replace('rounding = "truncate"', f'rounding = "{rounding}"')
    return loads_registry(text, source="golden-registry.toml")
