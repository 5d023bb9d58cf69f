"""Time the monthly close's aggregation over a month of ``usage_hourly``, beside DuckDB.

    .venv/bin/python bench/gen_usage_month.py --out bench/out/close-data      # once (~187M rows)
    .venv/bin/python bench/bench_close.py --data bench/out/close-data [--repeat 2] [--full-close]

Each measurement runs in its own child process (so peak RSS is that measurement's alone):

* ``polars``: :func:`accounting.usage.scan_month`, the close's aggregation: per KST day,
  usage per hour × entity × project × model, and the per-physical-GPU-hour wall-clock check
  (64-bit hash key first, exact keys on candidates);
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
import resource
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
        "groups": hourly.height,
        "oversubscribed": int(over["oversubscribed_gpu_hours"].sum() or 0),
        "totals": {f"{r[0]}|{r[1]}|{r[2]}": int(r[3]) for r in totals.iter_rows()},
    }


DUCK_DAY = """
with u as (
  select hour_start, entity, project, gpu_model, gpu_microseconds, busy_gpu_microseconds,
         hash(gpu_uuid, hour_start) as gpu_hour
  from read_parquet('{glob}')
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
    days = sorted((data / "usage_hourly" / f"period={PERIOD}").glob("date=*"))
    started = time.perf_counter()
    totals: dict[str, int] = {}
    groups = candidates = 0
    for day in days:
        table = con.sql(DUCK_DAY.format(glob=f"{day}/*.parquet")).to_arrow_table()
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
    return {"seconds": seconds, "groups": groups, "oversubscribed_candidates": candidates, "totals": totals}


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT / "bench" / "out" / "close-data")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each engine, interleaved")
    parser.add_argument("--full-close", action="store_true", help="also time the whole close_month")
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        sys.path.insert(0, str(ROOT))
        result = CHILDREN[args.child](args.data)
        result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return

    files = sorted((args.data / "usage_hourly").rglob("*.parquet"))
    size = sum(f.stat().st_size for f in files)
    import pyarrow.parquet as pq

    rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    print(f"data: {rows:,} rows in {len(files)} files, {size / 2**30:.2f} GiB")
    runs: dict[str, list[dict]] = {"polars": [], "duckdb": []}
    for i in range(args.repeat):
        for kind in ("polars", "duckdb"):
            result = run_child(kind, args.data)
            runs[kind].append(result)
            short = {k: v for k, v in result.items() if k != "totals"}
            print(json.dumps({"run": i + 1, "engine": kind, **short}))
    if runs["polars"][0]["totals"] != runs["duckdb"][0]["totals"]:
        raise SystemExit("polars and duckdb disagree on the totals")
    best = {k: min(r["seconds"] for r in v) for k, v in runs.items()}
    rss = {k: max(r["peak_rss_mib"] for r in v) for k, v in runs.items()}
    print(
        f"aggregation, best of {args.repeat}: polars {best['polars']:.1f} s (peak {rss['polars']:.0f} MiB), "
        f"duckdb {best['duckdb']:.1f} s (peak {rss['duckdb']:.0f} MiB); "
        f"polars/duckdb time ratio {best['polars'] / best['duckdb']:.2f}; totals agree"
    )
    if args.full_close:
        result = run_child("close", args.data)
        print(json.dumps({"engine": "close_month", **result}))


if __name__ == "__main__":
    main()
