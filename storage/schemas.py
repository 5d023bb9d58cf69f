"""Declared Arrow schemas of the datasets the stream consumer writes.

Schemas are declared here and never inferred from data (STYLE.md 11): a reader (DuckDB,
Polars, pyarrow) of any file under ``raw/``, ``quarantine/`` or ``usage_hourly/`` sees exactly
these columns and types. Partition columns (``period``, ``date``) are part of the Hive path
*and* of the file, so a file read on its own still says where it belongs.

Times are instants in UTC (``timestamp[us, UTC]``). ``period`` is the KST calendar month
(``YYYY-MM``) and ``date`` the KST calendar date of ``interval_start``/``hour_start``.
Usage is integer GPU-microseconds so sums are exact; ``gpu_seconds`` keeps the float the
event carried, for the record.
"""

from __future__ import annotations

import pyarrow as pa

TS = pa.timestamp("us", tz="UTC")

RAW_EVENTS = pa.schema(
    [
        ("period", pa.string()),
        ("date", pa.string()),
        ("event_id", pa.string()),
        ("schema_version", pa.int32()),
        ("site", pa.string()),
        ("node", pa.string()),
        ("gpu_uuid", pa.string()),
        ("device_uuid", pa.string()),
        ("gpu_model", pa.string()),
        ("mig_profile", pa.string()),
        ("gpu_fraction", pa.float64()),
        ("entity", pa.string()),
        ("project", pa.string()),
        ("job_id", pa.string()),
        ("interval_start", TS),
        ("interval_end", TS),
        ("gpu_seconds", pa.float64()),
        ("busy_gpu_seconds", pa.float64()),
        ("gpu_microseconds", pa.int64()),
        ("busy_gpu_microseconds", pa.int64()),
        ("energy_joules", pa.float64()),
        ("samples", pa.int32()),
        ("expected_samples", pa.int32()),
        ("flags", pa.list_(pa.string())),
    ]
)
RAW_PARTITIONS = ("period", "date")

QUARANTINE = pa.schema(
    [
        ("period", pa.string()),  # KST month of interval_start when readable, else "unknown"
        ("quarantine_id", pa.string()),  # SHA-256 (32 hex) of the raw line: a re-sent line is kept once
        ("reason_code", pa.string()),
        ("reason", pa.string()),
        ("source", pa.string()),  # where it came from: "file.jsonl:12", "gpu.usage.v1/0@1234"
        ("raw", pa.string()),  # the refused line exactly as received (UTF-8, replacement for bad bytes)
        ("event_id", pa.string()),
        ("entity", pa.string()),
        ("project", pa.string()),
        ("gpu_model", pa.string()),
        ("interval_start", TS),
        ("gpu_microseconds", pa.int64()),
    ]
)
QUARANTINE_PARTITIONS = ("period",)

USAGE_HOURLY = pa.schema(
    [
        ("period", pa.string()),
        ("date", pa.string()),
        ("hour_start", TS),  # UTC instant; KST hours begin on UTC hour boundaries (UTC+9)
        ("site", pa.string()),
        ("node", pa.string()),
        ("entity", pa.string()),
        ("project", pa.string()),
        ("job_id", pa.string()),
        ("gpu_uuid", pa.string()),
        ("device_uuid", pa.string()),
        ("gpu_model", pa.string()),
        ("mig_profile", pa.string()),
        ("gpu_fraction", pa.float64()),
        ("gpu_microseconds", pa.int64()),
        ("busy_gpu_microseconds", pa.int64()),
        ("energy_joules", pa.float64()),
        ("events", pa.int64()),
        ("partial_events", pa.int64()),
        ("samples", pa.int64()),
        ("expected_samples", pa.int64()),
    ]
)
USAGE_HOURLY_PARTITIONS = ("period", "date")

# The datasets kept as Delta tables (storage.delta): name → (schema, partition directories)
TABLES: dict[str, tuple[pa.Schema, tuple[str, ...]]] = {
    "raw": (RAW_EVENTS, RAW_PARTITIONS),
    "quarantine": (QUARANTINE, QUARANTINE_PARTITIONS),
    "usage_hourly": (USAGE_HOURLY, USAGE_HOURLY_PARTITIONS),
}
