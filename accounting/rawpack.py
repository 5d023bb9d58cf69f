"""The auditor pack's raw events (``gpuledger export --raw-events``): hourly usage tied to events.

The manifest of a month lists, under ``reads.raw``, the Delta version of ``raw`` the close read
and the month's ``raw`` files at that version with the SHA-256 recorded when each was committed.
:func:`export_raw_events` copies exactly those files into ``auditor/raw/…`` (each checked
against its recorded SHA-256 while copied: a changed file is refused, never exported) and writes
``auditor/raw-events.sha256`` (``sha256sum -c`` input). :data:`REDERIVE_SQL` is the DuckDB query
that re-derives ``usage_hourly`` from those events; docs/auditors.md documents it and a test runs
it against a closed month and compares row by row with the sealed ``usage_hourly`` files.

A month sealed before the manifest recorded its reads has no such list: the option then says so.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from accounting.errors import AccountingError
from storage.dataset import Store
from storage.errors import IntegrityError
from storage.seal import read_files

RAW_SUMS = "raw-events.sha256"

# Re-derives usage_hourly from the month's raw events: GPU time in exact integer microseconds,
# energy summed as integer millijoules (half-even rounding of each event, as the roll-up does).
REDERIVE_SQL = """\
SET TimeZone = 'UTC';
SELECT period, date, date_trunc('hour', interval_start) AS hour_start,
       site, node, entity, project, job_id, gpu_uuid, device_uuid, gpu_model, mig_profile, gpu_fraction,
       sum(gpu_microseconds) AS gpu_microseconds,
       sum(busy_gpu_microseconds) AS busy_gpu_microseconds,
       CASE WHEN count(energy_joules) > 0
            THEN sum(round_even(energy_joules * 1000, 0)::BIGINT) / 1000 END AS energy_joules,
       count(*) AS events,
       count(*) FILTER (WHERE list_contains(flags, 'partial_interval')) AS partial_events,
       sum(samples) AS samples,
       sum(expected_samples) AS expected_samples
FROM read_parquet('raw/**/*.parquet', hive_partitioning = false)
GROUP BY ALL
ORDER BY ALL;
"""


class RawEventsError(AccountingError):
    """The month's raw events cannot be exported as sealed."""


def export_raw_events(store: Store, period: str, manifest: Mapping[str, object], pack: Store) -> list[str]:
    """Copy the raw files the close of ``period`` read into ``pack``'s ``auditor/``; the paths
    written (relative to the pack). Raises :class:`IntegrityError` for a file whose bytes are
    not what was committed."""
    files = read_files(manifest)
    if not files:
        raise RawEventsError(
            f"the manifest of {period} lists no raw files (sealed before seals recorded the raw version): "
            "export without --raw-events"
        )
    written: list[str] = []
    sums: list[str] = []
    for entry in files:
        rel = entry["path"]
        try:
            data = store.read_bytes(store.path(rel))
        except OSError as exc:
            raise IntegrityError(f"{rel} (read by the close of {period}) is missing: run gpuledger verify --all") from exc
        digest = hashlib.sha256(data).hexdigest()
        if entry.get("sha256") and digest != entry["sha256"]:
            raise IntegrityError(
                f"{rel} is not the file the close of {period} read (SHA-256 differs): run gpuledger verify --all"
            )
        pack.write_bytes_atomic(pack.path("auditor", rel), data)
        written.append(f"auditor/{rel}")
        sums.append(f"{digest}  {rel}")
    pack.write_bytes_atomic(pack.path("auditor", RAW_SUMS), ("\n".join(sorted(sums)) + "\n").encode())
    written.append(f"auditor/{RAW_SUMS}")
    return written


def raw_events_readme(period: str, manifest: Mapping[str, object]) -> str:
    """The pack README's section on the raw events (appended when they are exported)."""
    reads = manifest.get("reads") or {}
    version = reads.get("raw", {}).get("version") if isinstance(reads, dict) else None
    return f"""
## Raw events

`raw/` holds the events of {period} exactly as the close read them: `raw` at Delta version
{version} (the manifest's `reads.raw`). Check them, from this directory:

```sh
sha256sum -c {RAW_SUMS}
```

Then re-derive the hourly usage (`usage_hourly/`) from them with DuckDB, run from this directory:

```sql
{REDERIVE_SQL}```

Every row equals a row of the sealed `usage_hourly/` files (the same query's `EXCEPT` against
`read_parquet('usage_hourly/**/*.parquet', hive_partitioning = false)` is empty, both ways).
"""
