"""Does the hourly upkeep write a day about once? (issue 16, goal 5: ≤ 2 × the day's raw bytes)

A simulated fleet (``bench.gen_fleet``: its late events and duplicates included) is consumed
through the real pipeline (``BatchProcessor``, Arrow wire, one commit per ``--batch-minutes``
of messages) for one KST day and the hours after it; after every hour the real hourly upkeep
runs (``accounting.scheduler.run_compaction``: roll-up, compaction, vacuum, under the lease).
Bytes are read from the Delta logs: raw bytes the consumer committed into the day's partition,
bytes compaction wrote (raw and quarantine) and bytes the roll-up wrote for the day. The
upkeep's CPU-seconds (user+sys, this process, Polars threads included) are summed.

Peer, same run: when the day closes, a copy of the ``raw`` table is compacted by delta-rs
``optimize.compact`` (same 128 MiB target) and another copy by ours (``compact_dataset``, the
closed day only); bytes and CPU are printed side by side, and whether delta-rs's commit kept
the ``interval_start`` statistics and the SHA-256 of each file.

    python -m bench.bench_upkeep --gpus 1000 --hours 27

Run the code before this change with ``PYTHONPATH=<checkout of it>`` to measure "before".
Prints one JSON line per hour, then a summary; fails if no raw row was stored.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DAY = "2026-11-03"  # the KST day measured
DAY_START = datetime(2026, 11, 2, 15, tzinfo=UTC)  # 00:00 KST on DAY
NEXT_DAY = "2026-11-04"


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _sizes(root: Path, table: str) -> dict[str, int]:
    """Live files of a table → bytes, from its Delta log (delta-rs, independent of our code)."""
    from deltalake import DeltaTable

    if not (root / table / "_delta_log").exists():
        return {}
    actions = DeltaTable(str(root / table)).get_add_actions(flatten=True)
    paths = [str(p) for p in actions.column("path").to_pylist()]
    return dict(zip(paths, actions.column("size_bytes").to_pylist(), strict=True))


def _of_day(paths: dict[str, int]) -> int:
    return sum(size for path, size in paths.items() if f"date={DAY}/" in path)


def _new(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {p: s for p, s in after.items() if p not in before}


def _peer_compact(root: Path, work: Path) -> dict:
    """delta-rs optimize.compact on a copy of raw as it stands when the day closes."""
    from deltalake import DeltaTable

    copy = work / "peer-raw"
    shutil.copytree(root / "raw", copy)
    before = _sizes(work, "peer-raw")
    cpu, t0 = _cpu(), time.perf_counter()
    metrics = DeltaTable(str(copy)).optimize.compact(target_size=128 * 1024 * 1024)
    cpu, wall = _cpu() - cpu, time.perf_counter() - t0
    table = DeltaTable(str(copy))
    added = _new(before, _sizes(work, "peer-raw"))
    log = copy / "_delta_log" / f"{table.version():020d}.json"
    adds = [json.loads(line)["add"] for line in log.read_text().splitlines() if '"add"' in line]
    stats = [json.loads(a.get("stats") or "{}") for a in adds]
    shutil.rmtree(copy)
    # ours on another copy of the same table, same moment: the closed day packed by target size
    from storage.compaction import compact_dataset
    from storage.dataset import Store

    ours_root = work / "ours"
    shutil.copytree(root / "raw", ours_root / "raw")
    before_ours = _sizes(ours_root, "raw")
    cpu_ours, t0 = _cpu(), time.perf_counter()
    results = compact_dataset(Store(ours_root), "raw", before_date=NEXT_DAY)
    cpu_ours, wall_ours = _cpu() - cpu_ours, time.perf_counter() - t0
    ours = {"files_in": sum(r.files_in for r in results), "files_out": len(results),
            "bytes_written": sum(_new(before_ours, _sizes(ours_root, "raw")).values()),
            "cpu_s": round(cpu_ours, 2), "wall_s": round(wall_ours, 2)}
    shutil.rmtree(ours_root)
    return {
        "gpuledger_compact_dataset_same_copy": ours,
        "peer": "delta-rs optimize.compact (whole raw table copy)",
        "files_in": metrics.get("numFilesRemoved"), "files_out": metrics.get("numFilesAdded"),
        "bytes_written": sum(added.values()), "cpu_s": round(cpu, 2), "wall_s": round(wall, 2),
        "keeps_interval_start_stats": all("interval_start" in s.get("minValues", {}) for s in stats),
        "keeps_sha256": all("gpuledger_sha256" in s for s in stats),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpus", type=int, default=1000)
    parser.add_argument("--hours", type=int, default=27, help="from 00:00 KST on the day; ≥ 25 so the day closes")
    parser.add_argument("--batch-minutes", type=int, default=5, help="messages per consumer commit")
    parser.add_argument("--no-peer", action="store_true")
    args = parser.parse_args(argv)
    if args.hours < 25:
        parser.error("--hours must be at least 25 (the upkeep after the day closes packs it)")

    from accounting.registry import load_registry
    from accounting.scheduler import run_compaction
    from bench.gen_fleet import FleetOptions, generate
    from gpuledger.wiring import accounts_of
    from storage.dataset import Store
    from streams.pipeline import BatchProcessor, Position
    from streams.wire import encode_arrow

    registry = load_registry(REPO / "examples" / "registry.toml")
    options = FleetOptions(gpus=args.gpus, interval_s=60, sample_period_s=10)
    with tempfile.TemporaryDirectory(prefix="bench-upkeep-") as tmp:
        work = Path(tmp)
        root = work / "data"
        store = Store(root)
        processor = BatchProcessor(store, accounts_of(registry))
        raw_bytes = events = offset = 0
        written = {"compaction_raw": 0, "compaction_quarantine": 0, "rollup": 0}
        upkeep_cpu = ingest_cpu = 0.0
        peer: dict | None = None
        batch: list[tuple[str, bytes]] = []
        positions: list = []
        window_end = DAY_START + timedelta(minutes=args.batch_minutes)
        hour_end = DAY_START + timedelta(hours=1)

        def commit() -> None:
            nonlocal raw_bytes, ingest_cpu, batch, positions
            if not batch:
                return
            before = _sizes(root, "raw")
            cpu = _cpu()
            processor.process(batch, positions)
            ingest_cpu += _cpu() - cpu
            raw_bytes += _of_day(_new(before, _sizes(root, "raw")))
            batch, positions = [], []

        def upkeep(now: datetime) -> None:
            nonlocal upkeep_cpu, peer
            if peer is None and not args.no_peer and now >= DAY_START + timedelta(days=1):
                peer = _peer_compact(root, work)  # the day just closed: the peer packs a copy
            before = {t: _sizes(root, t) for t in ("raw", "quarantine", "usage_hourly")}
            cpu = _cpu()
            run = run_compaction(store, now, retention_hours=0)
            spent = _cpu() - cpu
            upkeep_cpu += spent
            new = {t: _new(before[t], _sizes(root, t)) for t in before}
            hour = {"compaction_raw": _of_day(new["raw"]), "compaction_quarantine": sum(new["quarantine"].values()),
                    "rollup": _of_day(new["usage_hourly"])}
            for k, v in hour.items():
                written[k] += v
            print(json.dumps({"upkeep_at": now.isoformat(), "raw_bytes_so_far": raw_bytes, **hour,
                              "cpu_s": round(spent, 2), "locked_out": run.locked_out}), flush=True)

        for message in generate(DAY_START, args.hours * 60, options, registry):
            while message.sent_at >= window_end:
                commit()
                if window_end >= hour_end:
                    upkeep(hour_end + timedelta(minutes=5))
                    hour_end += timedelta(hours=1)
                window_end += timedelta(minutes=args.batch_minutes)
            batch.append((f"gpu.usage.v1/0@{offset}", encode_arrow(message.events)))
            positions.append(Position("bench/gpu.usage.v1/0", offset))
            offset += 1
            events += message.events.num_rows
        commit()
        upkeep(hour_end + timedelta(minutes=5))

        import duckdb

        stored = duckdb.sql(
            f"select count(*) from read_parquet('{root}/raw/period=2026-11/date={DAY}/*.parquet')"
        ).fetchall()[0][0]
        live = _sizes(root, "raw")
        assert stored > 0 and raw_bytes > 0, "no raw row stored: nothing was measured"
        upkeep_bytes = sum(written.values())
        print(json.dumps({
            "summary": True, "gpus": args.gpus, "events_sent": events, "day": DAY,
            "raw_rows_of_day_on_disk": stored, "raw_files_of_day_live": sum(1 for p in live if f"date={DAY}/" in p),
            "raw_bytes_of_day": raw_bytes, **written, "upkeep_bytes": upkeep_bytes,
            "upkeep_over_raw": round(upkeep_bytes / raw_bytes, 3),
            "upkeep_cpu_s": round(upkeep_cpu, 2), "ingest_cpu_s": round(ingest_cpu, 2), "peer": peer,
        }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
