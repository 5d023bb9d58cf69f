"""Generate a synthetic KST month of ``usage_hourly`` for the programme's new GPUs.

260,000 Blackwell GPUs (gov 50k, samsung 50k, hyundai 50k, skt 50k, naver 60k; B200/GB200
split as in ``examples/registry.toml``) × 720 hours of November 2026 = 187,200,000 rows,
written through the project's own storage (``storage.dataset.Store.write_files`` and one Delta
commit per KST day, the compacted layout: one file per day) into the ``usage_hourly`` Delta
table of ``<out>``, so the close reads it exactly as it reads a consumer's data. Deterministic
(seeded): the same arguments give the same data. Refuses to write into a data dir that holds a
``usage_hourly`` table already (remove it first).

    .venv/bin/python bench/gen_usage_month.py --out bench/out/close-data            # full month
    .venv/bin/python bench/gen_usage_month.py --out bench/out/close-small --scale 0.1

Owners: every 8-GPU node belongs to one project of its entity for the month (gov's nodes are
spread over its four projects); one node in twenty runs no job (``unattributed``). Usage:
97 % of GPU-hours are full hours, the rest partial; busy time is a random share of it.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from storage.dataset import Store  # noqa: E402

# entity → (new GPUs, B200 share, projects)
FLEET = {
    "gov": (50_000, 30_000, ["snu-llm", "kaist-vision", "upstage-pretrain", "etri-sovereign"]),
    "samsung": (50_000, 30_000, ["samsung-foundry-ai"]),
    "hyundai": (50_000, 35_000, ["hyundai-autonomy"]),
    "skt": (50_000, 25_000, ["skt-ax"]),
    "naver": (60_000, 20_000, ["naver-hyperclova"]),
}
HOUR_US = 3_600_000_000


def fleet(scale: float) -> pl.DataFrame:
    """One row per GPU with its static attributes."""
    frames = []
    offset = 0
    for entity, (count, b200, projects) in FLEET.items():
        n = int(round(count * scale))
        n_b200 = int(round(b200 * scale))
        idx = np.arange(n)
        node = idx // 8
        project_of_node = np.array(projects, dtype=object)[node % len(projects)]
        project = np.where(node % 20 == 19, "unattributed", project_of_node)
        frames.append(
            pl.DataFrame(
                {
                    "entity": [entity] * n,
                    "gpu_model": np.where(idx < n_b200, "NVIDIA B200", "NVIDIA GB200"),
                    "node": [f"{entity}-n{k:05d}" for k in node],
                    "project": project,
                    "gpu_uuid": [f"GPU-{offset + k:08x}-5b1e-4c2a-9d0f-{entity[:4]:>04}" for k in idx],
                }
            )
        )
        offset += n
    base = pl.concat(frames)
    return base.with_columns(
        site=pl.lit("dc-sejong"),
        device_uuid=pl.col("gpu_uuid"),
        job_id=pl.when(pl.col("project") == "unattributed").then(None).otherwise(pl.lit("slurm:") + pl.col("node")),
        mig_profile=pl.lit(None, dtype=pl.String),
        gpu_fraction=pl.lit(1.0),
    )


def day_frame(base: pl.DataFrame, day: datetime, rng: np.random.Generator) -> pl.DataFrame:
    """24 hourly rows per GPU for one KST day (``day`` is 00:00 KST as a UTC instant)."""
    hours = pl.DataFrame({"hour_start": [day + timedelta(hours=h) for h in range(24)]}).with_columns(
        pl.col("hour_start").cast(pl.Datetime("us", "UTC"))
    )
    frame = hours.join(base, how="cross")
    n = frame.height
    full = rng.random(n) < 0.97
    micro = np.where(full, HOUR_US, rng.integers(60_000_000, HOUR_US, n))
    busy = (micro * rng.random(n)).astype(np.int64)
    kst = day + timedelta(hours=9)
    return frame.with_columns(
        period=pl.lit(kst.strftime("%Y-%m")),
        date=pl.lit(kst.strftime("%Y-%m-%d")),
        gpu_microseconds=pl.Series(micro, dtype=pl.Int64),
        busy_gpu_microseconds=pl.Series(busy, dtype=pl.Int64),
        energy_joules=pl.Series(micro / 1e6 * 700.0),
        events=pl.lit(60, dtype=pl.Int64),
        partial_events=pl.Series(np.where(full, 0, 1), dtype=pl.Int64),
        samples=pl.lit(360, dtype=pl.Int64),
        expected_samples=pl.lit(360, dtype=pl.Int64),
    )


COLUMNS = [
    "period", "date", "hour_start", "site", "node", "entity", "project", "job_id", "gpu_uuid",
    "device_uuid", "gpu_model", "mig_profile", "gpu_fraction", "gpu_microseconds",
    "busy_gpu_microseconds", "energy_joules", "events", "partial_events", "samples", "expected_samples",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench/out/close-data"), help="data dir to write into")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the 260,000 GPUs (default 1.0)")
    parser.add_argument("--days", type=int, default=None, help="only the first N days (default: the whole month)")
    parser.add_argument("--seed", type=int, default=20261101)
    args = parser.parse_args()

    first = datetime(2026, 11, 1, tzinfo=UTC) - timedelta(hours=9)  # 2026-11-01 00:00 KST
    days = args.days or 30
    if (args.out / "usage_hourly").exists():
        raise SystemExit(f"{args.out / 'usage_hourly'} exists: remove it, or write into another --out")
    store = Store(args.out)
    base = fleet(args.scale)
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    rows = 0
    for d in range(days):
        day = first + timedelta(days=d)
        frame = day_frame(base, day, rng).select(COLUMNS)
        kst_date = (day + timedelta(hours=9)).strftime("%Y-%m-%d")
        adds = store.write_files("usage_hourly", frame, f"bench-{kst_date}")
        store.commit_files("usage_hourly", adds)
        rows += frame.height
        print(f"{kst_date}: {frame.height:,} rows ({time.perf_counter() - started:.1f} s)", flush=True)
    listed = store.files("usage_hourly")
    size = sum(Path(p).stat().st_size for p in listed)
    print(f"wrote {rows:,} rows in {len(listed)} committed files, {size / 2**30:.2f} GiB, {len(base):,} GPUs, "
          f"in {time.perf_counter() - started:.1f} s")

if __name__ == "__main__":
    main()
