"""Do the hourly reads cost the period, not the history? (issue 16, goal 7: flat to 12 months)

Month after month a small simulated fleet (``bench.gen_fleet``, a few days, hourly events,
some refused lines) goes through the real pipeline, is rolled up, compacted and closed
(``accounting.close.close_month``: a real manifest per month). After each month, with one new
batch of the next month committed, this measures (CPU-seconds user+sys, this process):

- ``upkeep``: one hourly upkeep (``run_compaction``: roll-up, compaction, vacuum, lease), and
  how many manifests it read;
- ``sealed_touched`` / ``sealed_all``: the sealed-file set of the periods the upkeep touches
  (what it reads now) and of every period (what it read before: every manifest, every hour);
- ``listing``: the ``raw`` table's file list from a cold start (a new Store) and once more;
- ``quarantined``: the quarantine listing of the current month.

    python -m bench.bench_reading_history --months 12 --gpus 20

Prints one JSON line per month; fails if a month stored no raw row.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KST = timedelta(hours=9)


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _timed(step, repeat: int = 5):  # noqa: ANN001, ANN202
    """(result, CPU-seconds per call) over ``repeat`` calls."""
    cpu = _cpu()
    for _ in range(repeat):
        result = step()
    return result, round((_cpu() - cpu) / repeat, 4)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--months", type=int, default=12)
    parser.add_argument("--gpus", type=int, default=20)
    parser.add_argument("--days", type=int, default=3, help="days of usage per month")
    args = parser.parse_args(argv)

    import duckdb

    sys.path.insert(0, str(REPO / "tests" / "unit"))
    from spine_events import event, jsonl

    import storage.seal as seal
    from accounting.close import close_month
    from accounting.registry import load_registry
    from accounting.scheduler import run_compaction
    from accounting.usage import quarantined
    from bench.gen_fleet import FleetOptions, generate
    from gpuledger.wiring import accounts_of
    from storage.compaction import compact_dataset
    from storage.dataset import Store
    from storage.rollup import roll_up
    from streams.pipeline import BatchProcessor, Position
    from streams.wire import encode_arrow

    registry = load_registry(REPO / "examples" / "registry.toml")
    reads: list[str] = []
    real_read = seal.read_manifest

    def counted(store: Store, period: str) -> dict:
        reads.append(period)
        return real_read(store, period)

    seal.read_manifest = counted
    with tempfile.TemporaryDirectory(prefix="bench-reading-") as tmp:
        store = Store(Path(tmp) / "data")
        processor = BatchProcessor(store, accounts_of(registry))
        offset = 0

        def consume(start: datetime, minutes: int, seed: int) -> None:
            nonlocal offset
            options = FleetOptions(gpus=args.gpus, interval_s=3600, sample_period_s=60, late_fraction=0.0, seed=seed)
            batch, positions = [], []
            for message in generate(start, minutes, options, registry):
                batch.append((f"gpu.usage.v1/0@{offset}", encode_arrow(message.events)))
                positions.append(Position("bench/gpu.usage.v1/0", offset))
                offset += 1
                if len(batch) >= 20:
                    processor.process(batch, positions)
                    batch, positions = [], []
            refused = event((start + timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%M:00Z"), project="no-such-project")
            batch.append((f"bad@{offset}", jsonl(refused)))  # refused (unknown project): quarantined in its month
            positions.append(Position("bench/gpu.usage.v1/0", offset))
            offset += 1
            processor.process(batch, positions)

        for index in range(args.months):
            year, month = 2026 + index // 12, index % 12 + 1
            period = f"{year}-{month:02d}"
            first = datetime(year, month, 1, tzinfo=UTC) - KST  # 00:00 KST on the 1st
            consume(first, args.days * 24 * 60, index)
            roll_up(store)
            compact_dataset(store, "raw")
            close_month(store, registry, period)
            stored = duckdb.sql(
                f"select count(*) from read_parquet('{store.root}/raw/period={period}/**/*.parquet')"
            ).fetchall()[0][0]
            assert stored > 0, f"no raw row stored for {period}"
            # the next month has begun: one hour of it, then the hourly upkeep
            year2, month2 = (year, month + 1) if month < 12 else (year + 1, 1)
            nxt = f"{year2}-{month2:02d}"
            start2 = datetime(year2, month2, 1, tzinfo=UTC) - KST + timedelta(days=1, hours=index % 20)
            consume(start2, 60, 1000 + index)
            reads.clear()
            cpu = _cpu()
            run_compaction(store, start2 + timedelta(hours=1, minutes=5), retention_hours=0)
            upkeep_cpu = round(_cpu() - cpu, 3)
            upkeep_reads = len(reads)
            touched, touched_cpu = _timed(lambda: seal.sealed_files(store, {nxt}))
            everything, all_cpu = _timed(lambda: seal.sealed_files(store))
            cold_cpu = _cpu()
            listed = len(Store(store.root).table("raw").files())
            cold_cpu = round(_cpu() - cold_cpu, 4)
            _, warm_cpu = _timed(lambda: store.table("raw").files())
            quarantine, q_cpu = _timed(lambda: quarantined(store, nxt))
            print(json.dumps({
                "months_sealed": index + 1, "raw_rows_of_month": stored, "raw_files_live": listed,
                "upkeep_cpu_s": upkeep_cpu, "upkeep_manifests_read": upkeep_reads,
                "sealed_touched_cpu_s": touched_cpu, "sealed_touched_files": len(touched),
                "sealed_all_cpu_s": all_cpu, "sealed_all_files": len(everything),
                "listing_cold_cpu_s": cold_cpu, "listing_warm_cpu_s": warm_cpu,
                "quarantined_cpu_s": q_cpu, "quarantine_rows": int(quarantine["events"].sum() or 0),
            }), flush=True)
    seal.read_manifest = real_read
    return 0


if __name__ == "__main__":
    sys.exit(main())
