"""The consumer's batch step from memory, stage by stage: where each event's time goes.

    .venv/bin/python bench/bench_batch_step.py [--events 1000000] [--batch-events 100000]

No broker: the benchmark's events (bench_ingest.make_events, ≤500 per message, key = node)
are encoded once as JSON Lines and once as Arrow IPC, then fed through the stages of
``streams.pipeline.BatchProcessor.process`` in batches of about ``--batch-events`` events
into a fresh data directory, each stage timed (wall and process CPU). The stages are the
processor's own functions called in its order, so the sum is what ``process`` costs.

Beside it, in the same run, the two costs no consumer of this contract can avoid on this
machine: the SHA-256 of every ``event_id`` key (``hashlib``, one thread, the reference) and
writing the raw rows to Parquet (pyarrow, zstd), with nothing else.

Prints a table and writes ``bench/out/batch_step.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import time
from collections import Counter
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from accounting.registry import load_registry
from bench_ingest import REPO, as_arrow, make_events, messages_of
from gpuledger.wiring import accounts_of
from storage.dataset import Store, to_table
from storage.schemas import RAW_EVENTS
from streams import pipeline
from streams.aggregate import to_raw
from streams.schema import EVENT_ID_SEPARATOR
from streams.validate import check_rules, decode_messages


class Clock:
    """Wall and CPU seconds per stage name."""

    def __init__(self) -> None:
        self.wall: Counter[str] = Counter()
        self.cpu: Counter[str] = Counter()

    def stage(self, name: str):
        clock = self

        class _Stage:
            def __enter__(self) -> None:
                self.wall, self.cpu = time.perf_counter(), time.process_time()

            def __exit__(self, *_: object) -> None:
                clock.wall[name] += time.perf_counter() - self.wall
                clock.cpu[name] += time.process_time() - self.cpu

        return _Stage()


def run(messages: list[tuple[str, bytes]], per_batch: int, events: int, data_dir: Path) -> dict:
    accounts = accounts_of(load_registry(REPO / "examples" / "registry.toml"))
    store = Store(data_dir)
    processor = pipeline.BatchProcessor(store, accounts)
    seen = processor._seen
    clock = Clock()
    stored = 0
    started_wall, started_cpu = time.perf_counter(), time.process_time()
    for i in range(0, len(messages), per_batch):
        batch = messages[i : i + per_batch]
        with clock.stage("decode"):
            frame, early = decode_messages(batch)
        with clock.stage("rules (incl. SHA-256 of ids)"):
            checked = check_rules(frame, accounts)
            valid = checked.filter(pl.col("reason_code").is_null())
            invalid = checked.filter(pl.col("reason_code").is_not_null())
        with clock.stage("shape raw rows"):
            raw = to_raw(valid)
        with clock.stage("dedupe"):
            unique = raw if raw["event_id"].n_unique() == raw.height else raw.unique(subset="event_id", keep="first", maintain_order=True)
            fresh = unique.filter(~seen.seen_mask(unique["interval_start"], unique["event_id"]))
        with clock.stage("sort"):
            fresh = fresh.sort(pl.col("interval_start"), pipeline._ID_PREFIX, maintain_order=True)
        with clock.stage("quarantine rows + batch id"):
            quarantine = processor._quarantine_rows(invalid, early)
            batch_id = pipeline._batch_id(fresh["event_id"], quarantine["quarantine_id"])
        with clock.stage("write raw Parquet"):
            files = store.write_files("raw", fresh, batch_id or "empty")
            q_files = store.write_files("quarantine", quarantine, batch_id or "empty")
        with clock.stage("commit (Delta log, offsets)"):
            if q_files:
                store.commit_files("quarantine", q_files, txns={"bench/t/0": i})
            store.commit_files("raw", files, txns={"bench/t/0": i})
        with clock.stage("dedupe window update"):
            seen.add(fresh["interval_start"], fresh["event_id"])
        stored += fresh.height
    wall, cpu = time.perf_counter() - started_wall, time.process_time() - started_cpu
    if stored != events:
        raise SystemExit(f"stored {stored} of {events} events")
    scale = 1e6 / events
    return {
        "events": events,
        "events_per_s": events / wall,
        "wall_s_per_million": wall * scale,
        "cpu_s_per_million": cpu * scale,
        "stages": {k: {"wall_s_per_million": clock.wall[k] * scale, "cpu_s_per_million": clock.cpu[k] * scale} for k in clock.wall},
    }


def floors(messages: list[tuple[str, bytes]], events: int, data_dir: Path) -> dict:
    """SHA-256 of each id key alone (hashlib, one thread) and the raw Parquet write alone."""
    frame, _ = decode_messages(messages)
    keys = [
        f"{n}{EVENT_ID_SEPARATOR}{d}{EVENT_ID_SEPARATOR}{s}".encode()
        for n, d, s in frame.select("node", "device_uuid", "interval_start").iter_rows()
    ]
    started = time.process_time()
    for key in keys:
        hashlib.sha256(key).hexdigest()
    sha_cpu = time.process_time() - started
    accounts = accounts_of(load_registry(REPO / "examples" / "registry.toml"))
    table = to_table(to_raw(check_rules(frame, accounts)), RAW_EVENTS)
    started = time.process_time()
    pq.write_table(table, data_dir / "floor.parquet", compression="zstd")
    write_cpu = time.process_time() - started
    scale = 1e6 / len(keys)
    return {"sha256_cpu_s_per_million": sha_cpu * scale, "parquet_write_cpu_s_per_million": write_cpu * scale}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--batch-events", type=int, default=100_000, help="events per batch (about)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "batch_step.json")
    args = parser.parse_args()

    intervals = make_events(args.events)
    events = sum(len(lines) for _, lines in intervals)
    as_json = messages_of(intervals, 500)
    encodings = {"json": as_json, "arrow": as_arrow(as_json)}
    per_batch = max(1, args.batch_events * len(as_json) // events)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        for wire, messages in encodings.items():
            results[wire] = run(messages, per_batch, events, Path(tmp) / wire)
        results["floors"] = floors(as_json[: max(1, len(as_json) // 5)], events // 5, Path(tmp))
    for wire in encodings:
        r = results[wire]
        print(f"{wire}: {r['events_per_s']:,.0f} events/s; {r['wall_s_per_million']:.2f} s wall, "
              f"{r['cpu_s_per_million']:.2f} s CPU per million events")
        for stage, cost in r["stages"].items():
            print(f"  {stage:34s} {cost['wall_s_per_million']:6.2f} s wall  {cost['cpu_s_per_million']:6.2f} s CPU")
    f = results["floors"]
    print(f"floors: SHA-256 of the id keys alone {f['sha256_cpu_s_per_million']:.2f} s CPU per million; "
          f"raw Parquet write alone {f['parquet_write_cpu_s_per_million']:.2f} s CPU per million")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
