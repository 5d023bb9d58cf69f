"""Bytes per event of ``raw/`` Parquet at the national shape, under several writer settings.

    .venv/bin/python bench/bench_raw_bytes.py [--gpus 20000] [--minutes 60] [--batch 50000]

Generates the fleet's traffic (``bench/gen_fleet.py``: the programme's entity and model mix,
MIG share, unattributed nodes, partial intervals), runs it through the consumer's own
pipeline (``BatchProcessor``: decode, rules, dedupe, the raw rows as they are stored) into a
temporary data dir, reads the stored ``raw`` rows back through the Delta log and writes them
again under each setting, at two file sizes: one consumer batch (``--batch`` events) and the
whole span in one file (a compacted hour). Prints bytes per event per setting, the bytes per
column of the smallest, and the floor the content itself sets (an ``event_id`` is 128 random
bits: 16 bytes per event however it is encoded).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from accounting.registry import load_registry  # noqa: E402
from bench.gen_fleet import Counts, FleetOptions, generate, to_json_lines  # noqa: E402
from gpuledger.wiring import accounts_of  # noqa: E402
from storage.dataset import Store, _dictionary_columns  # noqa: E402
from storage.schemas import RAW_EVENTS  # noqa: E402
from streams.pipeline import BatchProcessor  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SORT_BY_DEVICE = [("device_uuid", "ascending"), ("interval_start", "ascending"), ("node", "ascending")]  # what storage writes now


def size_of(table: pa.Table, **options: object) -> int:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, **options)
    return sink.getvalue().size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, default=20_000)
    parser.add_argument("--minutes", type=int, default=60)
    parser.add_argument("--batch", type=int, default=50_000)
    args = parser.parse_args()
    counts = Counts()
    messages = generate(datetime(2026, 11, 2, tzinfo=UTC), args.minutes, FleetOptions(gpus=args.gpus, max_message_events=500), counts=counts)
    with tempfile.TemporaryDirectory(prefix="bench-raw-") as tmp:
        store = Store(tmp)
        processor = BatchProcessor(store, accounts_of(load_registry(REPO / "examples" / "registry.toml")))
        chunk: list[tuple[str, bytes]] = []
        for index, message in enumerate(messages):
            chunk.append((f"m{index}", to_json_lines(message.events)))
            if len(chunk) == 100:
                processor.process(chunk)
                chunk = []
        if chunk:
            processor.process(chunk)
        files = store.files("raw")
        stored_bytes = sum(Path(f).stat().st_size for f in files)
        raw = pa.concat_tables([pq.read_table(f) for f in files]).select(RAW_EVENTS.names).cast(RAW_EVENTS)
    rows = raw.num_rows
    if rows == 0 or rows != counts.distinct:
        raise SystemExit(f"stored {rows:,} raw rows, expected the {counts.distinct:,} distinct events")
    print(f"{rows:,} events of {args.gpus:,} GPUs over {args.minutes} min; as the consumer stored them: "
          f"{stored_bytes / rows:.1f} bytes/event in {len(files)} files")
    today = {"compression": "zstd", "use_dictionary": _dictionary_columns(RAW_EVENTS)}
    all_dict = {"compression": "zstd", "use_dictionary": [n for n in RAW_EVENTS.names if n != "event_id"]}
    settings = {
        "the order read back (as stored), writer settings unchanged": (None, today),
        "sorted by device, interval (storage now)": (SORT_BY_DEVICE, today),
        "sorted + zstd 9": (SORT_BY_DEVICE, {**today, "compression_level": 9}),
        "sorted + zstd 19": (SORT_BY_DEVICE, {**today, "compression_level": 19}),
        "sorted + dictionary on every column but event_id + zstd 9": (SORT_BY_DEVICE, {**all_dict, "compression_level": 9}),
        "sorted + zstd 9 + byte_stream_split floats": (
            SORT_BY_DEVICE, {**today, "compression_level": 9, "use_byte_stream_split": ["gpu_seconds", "busy_gpu_seconds", "energy_joules", "gpu_fraction"]}),
    }
    best = None
    for label, (order, options) in settings.items():
        table = raw.sort_by(order) if order else raw
        per_batch = sum(size_of(table.slice(i, args.batch), **options) for i in range(0, rows, args.batch))
        whole = size_of(table, **options)
        print(f"  {label:62s} batch files {per_batch / rows:5.1f}  one file {whole / rows:5.1f} bytes/event")
        if best is None or whole < best[0]:
            best = (whole, label, table, options)
    assert best is not None
    _, label, table, options = best
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, **options)
    meta = pq.ParquetFile(pa.BufferReader(sink.getvalue())).metadata
    per_column: dict[str, int] = {}
    for g in range(meta.num_row_groups):
        for c in range(meta.num_columns):
            column = meta.row_group(g).column(c)
            per_column[column.path_in_schema] = per_column.get(column.path_in_schema, 0) + column.total_compressed_size
    print(f"bytes per event by column, {label}, one file:")
    for name, size in sorted(per_column.items(), key=lambda kv: -kv[1]):
        print(f"  {name:28s} {size / rows:5.2f}")


if __name__ == "__main__":
    main()
