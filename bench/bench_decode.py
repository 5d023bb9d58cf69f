"""The strict JSON decoder alone, from memory: CPU-s (user+sys) per million events, against the
reference decoder (every line through ``json`` with the duplicate-key hook, as before issue 16)
and plain decoders that check less, in the same run.

    .venv/bin/python bench/bench_decode.py [--gpus 8000] [--minutes 30] [--runs 3] [--old OLD_FASTJSON.py]

``--old`` times an earlier ``streams/fastjson.py`` (e.g. ``git show REV:streams/fastjson.py >
old.py``) as a second contender in the same run, through the same ``decode_json_messages``;
its table must be identical too.

Payloads: ``bench/gen_fleet.py`` traffic as JSON Lines, 500 events per message. Every decoder
must yield the same number of rows; ours and the reference must give identical tables.

Two columnar NDJSON readers are timed beside them (values only, with the wire schema given,
no checks): the price of letting msgspec only judge a line and reading its values with one
of them instead (that route would pay msgspec's decode on top).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import io
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import msgspec  # noqa: E402
import polars as pl  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.json as pj  # noqa: E402

from bench.gen_fleet import Counts, FleetOptions, generate, to_json_lines  # noqa: E402
from streams import jsonlines  # noqa: E402
from streams.jsonlines import decode_json_lines_reference, decode_json_messages  # noqa: E402
from streams.wire import ARROW_WIRE_SCHEMA  # noqa: E402


def cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, default=8_000)
    parser.add_argument("--minutes", type=int, default=30)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--old", type=Path, help="an earlier streams/fastjson.py to time beside this one")
    args = parser.parse_args()
    counts = Counts()
    payloads = [to_json_lines(m.events) for m in generate(datetime(2026, 11, 2, tzinfo=UTC), args.minutes,
                                                          FleetOptions(gpus=args.gpus, max_message_events=500), counts=counts)]
    lines = [line for p in payloads for line in p.split(b"\n") if line]
    plain = msgspec.json.Decoder()

    def reference() -> int:
        return decode_json_lines_reference(lines)[0].num_rows

    def ours() -> int:
        return decode_json_messages(payloads)[0].num_rows

    def json_loads() -> int:
        return len([json.loads(line) for p in payloads for line in p.split(b"\n") if line])

    def msgspec_untyped_gc_off() -> int:
        gc.disable()
        try:
            return sum(len(plain.decode_lines(p)) for p in payloads)
        finally:
            gc.enable()

    joined = b"\n".join(payloads)
    wire_schema = ARROW_WIRE_SCHEMA
    polars_schema = pl.from_arrow(wire_schema.empty_table()).schema

    def arrow_ndjson() -> int:
        return pj.read_json(pa.BufferReader(joined), read_options=pj.ReadOptions(use_threads=False, block_size=len(joined) + 1),
                            parse_options=pj.ParseOptions(explicit_schema=wire_schema)).num_rows

    def polars_ndjson() -> int:
        return pl.read_ndjson(io.BytesIO(joined), schema=polars_schema).to_arrow().num_rows

    def with_fast_path(module: Any) -> tuple[Any, ...]:
        swapped = (jsonlines.decode_fast, jsonlines.decode_messages_fast, jsonlines.line_views)
        jsonlines.decode_fast, jsonlines.decode_messages_fast, jsonlines.line_views = (
            module.decode_fast, module.decode_messages_fast, module.line_views)
        return swapped

    def old_route() -> pa.Table:
        assert args.old is not None
        spec = importlib.util.spec_from_file_location("fastjson_old", args.old)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["fastjson_old"] = module
        spec.loader.exec_module(module)
        swapped = with_fast_path(module)
        try:
            return decode_json_messages(payloads)[0]
        finally:
            jsonlines.decode_fast, jsonlines.decode_messages_fast, jsonlines.line_views = swapped

    def old() -> int:
        return old_route().num_rows

    contenders = {
        "reference (json + duplicate-key hook, before)": reference,
        **({f"gpuledger with {args.old.name} (decode_json_messages)": old} if args.old else {}),
        "gpuledger now (decode_json_messages)": ours,
        "json.loads per line (no checks, no columns)": json_loads,
        "msgspec decode_lines to dicts, GC off (no checks, no columns)": msgspec_untyped_gc_off,
        "pyarrow.json.read_json, one thread (values only, no checks)": arrow_ndjson,
        "polars.read_ndjson -> Arrow (values only, no checks)": polars_ndjson,
    }
    print(f"{counts.events:,} events in {len(payloads):,} messages")
    for label, run in contenders.items():
        best = float("inf")
        for _ in range(args.runs):
            start = cpu_s()
            rows = run()
            best = min(best, cpu_s() - start)
        if rows != counts.events:
            raise SystemExit(f"{label}: {rows:,} rows, expected {counts.events:,}")
        print(f"  {label:62s} {best * 1e6 / counts.events:6.2f} CPU-s/M")
    ours_table, ref_table = decode_json_messages(payloads)[0], decode_json_lines_reference(lines)[0]
    ours_table = ours_table.set_column(ours_table.num_columns - 1, "_raw", ours_table.column("_raw").cast(pa.string()))
    if not ours_table.equals(ref_table):
        raise SystemExit("gpuledger's table differs from the reference decoder's")
    if args.old:
        old_table = old_route()
        old_table = old_table.set_column(old_table.num_columns - 1, "_raw", old_table.column("_raw").cast(pa.string()))
        if not old_table.equals(ref_table):
            raise SystemExit(f"{args.old}'s table differs from the reference decoder's")
    print("  tables identical to the reference decoder's")


if __name__ == "__main__":
    main()
