"""Time the monthly close's aggregation over a month of ``usage_hourly``, beside DuckDB.

    .venv/bin/python bench/gen_usage_month.py --out bench/out/close-data      # once (187.2M rows, 1.21 GiB)
    .venv/bin/python bench/bench_close.py --data bench/out/close-data [--repeat 3] [--full-close]

The data is a Delta table written through the project's own storage (``gen_usage_month.py``):
the close lists its files from the Delta log, and DuckDB reads the files that ``deltalake``
(an independent reader of the same log) lists. The run FAILS if either side read no rows, or
if their totals differ.

Each measurement runs in its own child process (so CPU and peak RSS are that measurement's
alone: CPU-s are user+sys of the child, all threads; peak RSS is its ``VmHWM``):

* ``polars``: :func:`accounting.usage.scan_month`, the close's aggregation: per KST day,
  usage per hour × entity × project × model (one streaming pass), and the per-physical-GPU-hour
  wall-clock screen (a second streaming pass: one 64-bit hash per row, sorted; exact keys on
  the candidates it lets through);
* ``duckdb``: the same two aggregations over the same files, per day, in one scan per day
  (``GROUPING SETS``), 2 threads, ``memory_limit`` 4 GB;
* ``close`` (with ``--full-close``): the whole :func:`accounting.close.close_month` with the
  sample registry (pricing, ledgers, and the seal, which SHA-256s every input file), after
  removing the ledgers and manifests a previous run left in the bench data dir.

The two engines' results are compared (total GPU-microseconds per entity × project × model)
and the run fails if they differ. Prints one JSON line per run and a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PERIOD = "2026-11"


def child_polars(data: Path) -> dict:
    import polars as pl

    from accounting.usage import scan_month
    from storage.dataset import Store

    started = time.perf_counter()
    hourly, over = scan_month(Store(data), PERIOD)
    seconds = time.perf_counter() - started
    totals = hourly.group_by(["entity", "project", "gpu_model"]).agg(pl.col("gpu_microseconds").sum())
    return {
        "seconds": seconds,
        "rows_read": None,  # scan_month returns aggregates; totals equal to DuckDB's prove the rows
        "groups": hourly.height,
        "oversubscribed": int(over["oversubscribed_gpu_hours"].sum() or 0),
        "totals": {f"{r[0]}|{r[1]}|{r[2]}": int(r[3]) for r in totals.iter_rows()},
    }


DUCK_DAY = """
with u as (
  select hour_start, entity, project, gpu_model, gpu_microseconds, busy_gpu_microseconds,
         hash(gpu_uuid, hour_start) as gpu_hour
  from read_parquet([{files}])
)
select grouping(gpu_hour) as g, hour_start, entity, project, gpu_model, gpu_hour,
       sum(gpu_microseconds)::bigint as us, sum(busy_gpu_microseconds)::bigint as busy
from u
group by grouping sets ((hour_start, entity, project, gpu_model), (gpu_hour))
having grouping(gpu_hour) = 1 or sum(gpu_microseconds) > 3600000000
"""


def child_duckdb(data: Path) -> dict:
    import duckdb

    con = duckdb.connect()
    con.execute("set threads = 2")
    con.execute("set memory_limit = '4GB'")
    from deltalake import DeltaTable

    files_by_day: dict[str, list[str]] = {}
    for uri in DeltaTable(str(data / "usage_hourly")).file_uris():
        if f"/period={PERIOD}/" in uri:
            day = uri.split("/date=")[1].split("/")[0]
            files_by_day.setdefault(day, []).append(uri)
    started = time.perf_counter()
    totals: dict[str, int] = {}
    groups = candidates = rows_read = 0
    for day in sorted(files_by_day):
        listed = ", ".join("'" + f.replace("'", "''") + "'" for f in files_by_day[day])
        rows_read += con.execute(f"select count(*) from read_parquet([{listed}])").fetchall()[0][0]
        table = con.sql(DUCK_DAY.format(files=listed)).to_arrow_table()
        g = table.column("g").to_pylist()
        candidates += sum(1 for x in g if x == 0)
        owners = table.filter(table.column("g").to_numpy() == 1)
        groups += owners.num_rows
        for entity, project, model, us in zip(
            owners.column("entity").to_pylist(),
            owners.column("project").to_pylist(),
            owners.column("gpu_model").to_pylist(),
            owners.column("us").to_pylist(),
            strict=True,
        ):
            key = f"{entity}|{project}|{model}"
            totals[key] = totals.get(key, 0) + us
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "rows_read": rows_read, "groups": groups, "oversubscribed_candidates": candidates, "totals": totals}


def child_close(data: Path) -> dict:
    from accounting.close import close_month
    from accounting.registry import load_registry
    from storage.dataset import Store

    for leftover in ("ledgers", "manifests"):
        shutil.rmtree(data / leftover, ignore_errors=True)
    registry = load_registry(ROOT / "examples" / "registry.toml")
    started = time.perf_counter()
    result = close_month(Store(data), registry, PERIOD)
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "billing_lines": result.billing_lines,
        "amount_krw_all": str(result.totals["ALL"].amount_krw),
        "sealed": result.sealed,
    }


CHILDREN = {"polars": child_polars, "duckdb": child_duckdb, "close": child_close}


def run_child(kind: str, data: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", kind, "--data", str(data)],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def peak_rss_mib() -> float:
    """This process's peak resident memory (VmHWM; a forked parent's pages do not count)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT / "bench" / "out" / "close-data")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each engine, interleaved")
    parser.add_argument("--full-close", action="store_true", help="also time the whole close_month")
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        sys.path.insert(0, str(ROOT))
        result = CHILDREN[args.child](args.data)
        times = os.times()
        result["cpu_s"] = times.user + times.system
        result["peak_rss_mib"] = peak_rss_mib()
        print(json.dumps(result))
        return

    sys.path.insert(0, str(ROOT))
    from storage.dataset import Store

    files = Store(args.data).files(f"usage_hourly/period={PERIOD}")  # what the close lists: the Delta log
    size = sum(Path(f).stat().st_size for f in files)
    import pyarrow.parquet as pq

    rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    if rows == 0:
        raise SystemExit(f"the Delta table under {args.data / 'usage_hourly'} lists no rows of {PERIOD}: nothing to measure")
    print(f"data: {rows:,} rows in {len(files)} committed files, {size / 2**30:.2f} GiB")
    runs: dict[str, list[dict]] = {"polars": [], "duckdb": []}
    for i in range(args.repeat):
        for kind in ("polars", "duckdb"):
            result = run_child(kind, args.data)
            runs[kind].append(result)
            short = {k: v for k, v in result.items() if k != "totals"}
            print(json.dumps({"run": i + 1, "engine": kind, **short}), flush=True)
    duck_rows = {r["rows_read"] for r in runs["duckdb"]}
    if duck_rows != {rows}:
        raise SystemExit(f"duckdb read {duck_rows} rows, the log lists {rows:,}")
    for kind in ("polars", "duckdb"):
        for result in runs[kind]:
            if not result["totals"] or sum(result["totals"].values()) == 0:
                raise SystemExit(f"{kind} summed no GPU time: it read nothing")
            if result["totals"] != runs["duckdb"][0]["totals"]:
                raise SystemExit("polars and duckdb disagree on the totals")
    best = {k: min(r["seconds"] for r in v) for k, v in runs.items()}
    cpu = {k: min(r["cpu_s"] for r in v) for k, v in runs.items()}
    rss = {k: min(r["peak_rss_mib"] for r in v) for k, v in runs.items()}
    total_us = sum(runs["duckdb"][0]["totals"].values())
    print(
        f"aggregation of {rows:,} rows, min of {args.repeat}: close (polars) {best['polars']:.1f} s, {cpu['polars']:.1f} CPU-s, "
        f"{rss['polars']:.0f} MiB; duckdb {best['duckdb']:.1f} s, {cpu['duckdb']:.1f} CPU-s, {rss['duckdb']:.0f} MiB; "
        f"ratios close/duckdb: time {best['polars'] / best['duckdb']:.2f}, CPU {cpu['polars'] / cpu['duckdb']:.2f}, "
        f"memory {rss['polars'] / rss['duckdb']:.2f}; totals agree ({total_us / 3.6e9:,.1f} GPU-hours)"
    )
    if args.full_close:
        result = run_child("close", args.data)
        print(json.dumps({"engine": "close_month", **result}))


if __name__ == "__main__":
    main()
