"""Audit-room benchmark: verify vs sha256sum, compaction vs DuckDB, on the same files, same run.

    .venv/bin/python bench/bench_audit.py [--files 200] [--rows-per-file 20000] [--dir /tmp/x]

1. ``storage.manifest.verify`` over one sealed period of N usage_hourly files, beside
   ``sha256sum`` over the same files (the peer baseline: hashing is what verify must do).
2. ``storage.compaction.compact`` of one partition of N small files into one, beside DuckDB
   ``COPY (SELECT * FROM read_parquet([...])) TO … (FORMAT parquet, COMPRESSION zstd)``.

Prints one line per figure; the ratio is ours / peer (lower is better for us).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import polars as pl

from storage.compaction import compact
from storage.dataset import Store
from storage.manifest import seal_period, verify


def _frame(batch: int, rows: int) -> pl.DataFrame:
    start = datetime(2026, 11, 2, 15, tzinfo=UTC) + timedelta(hours=batch % 24)
    return pl.DataFrame(
        {
            "period": ["2026-11"] * rows,
            "date": ["2026-11-03"] * rows,
            "hour_start": [start] * rows,
            "site": ["dc1"] * rows,
            "node": [f"node-{i // 8:05d}" for i in range(rows)],
            "entity": ["gov"] * rows,
            "project": ["snu-llm"] * rows,
            "job_id": [None] * rows,
            "gpu_uuid": [f"GPU-{batch}-{i}" for i in range(rows)],
            "device_uuid": [f"GPU-{batch}-{i}" for i in range(rows)],
            "gpu_model": ["NVIDIA B200"] * rows,
            "mig_profile": [None] * rows,
            "gpu_fraction": [1.0] * rows,
            "gpu_microseconds": [3_600_000_000 - i for i in range(rows)],
            "busy_gpu_microseconds": [1_000 * i for i in range(rows)],
            "energy_joules": [float(i) for i in range(rows)],
            "events": [60] * rows,
            "partial_events": [0] * rows,
            "samples": [360] * rows,
            "expected_samples": [360] * rows,
        }
    )


def _write(root: Path, files: int, rows: int) -> Store:
    store = Store(root)
    for batch in range(files):
        store.commit_files("usage_hourly", store.write_files("usage_hourly", _frame(batch, rows), f"b{batch:05d}"))
    return store


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--rows-per-file", type=int, default=20_000)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    base = args.dir or Path(tempfile.mkdtemp(prefix="bench-audit-"))
    try:
        store = _write(base / "seal", args.files, args.rows_per_file)
        files = store.files("usage_hourly")
        size_mb = sum(Path(f).stat().st_size for f in files) / 1e6
        seal_period(store, "2026-11", files, {"x": "0"})
        t0 = time.perf_counter()
        report = verify(store)
        ours = time.perf_counter() - t0
        assert report.ok
        t0 = time.perf_counter()
        subprocess.run(["sha256sum", *files], check=True, capture_output=True)
        peer = time.perf_counter() - t0
        print(f"verify: {len(files)} files, {size_mb:.1f} MB: gpuledger verify {ours:.3f} s, "
              f"sha256sum {peer:.3f} s, ratio {ours / peer:.2f}")

        store = _write(base / "compact", args.files, args.rows_per_file)
        files = store.files("usage_hourly")
        rows = args.files * args.rows_per_file
        t0 = time.perf_counter()
        duckdb.sql(
            f"COPY (SELECT * FROM read_parquet({files!r})) TO '{base / 'duck.parquet'}' "
            "(FORMAT parquet, COMPRESSION zstd)"
        )
        peer = time.perf_counter() - t0
        t0 = time.perf_counter()
        result = compact(store, "usage_hourly", "period=2026-11/date=2026-11-03")  # streams row groups
        ours = time.perf_counter() - t0
        assert result.rows == rows
        print(f"compaction: {len(files)} files, {rows:,} rows: gpuledger compact {ours:.3f} s, "
              f"DuckDB COPY {peer:.3f} s, ratio {ours / peer:.2f}")
    finally:
        if args.dir is None:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
