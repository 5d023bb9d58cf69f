"""The strict JSON decoder alone, from memory: CPU-s (user+sys) per million events, against the
reference decoder (every line through ``json`` with the duplicate-key hook, as before issue 16)
and plain decoders that check less, in the same run.

    .venv/bin/python bench/bench_decode.py [--gpus 8000] [--minutes 30] [--runs 3]

Payloads: ``bench/gen_fleet.py`` traffic as JSON Lines, 500 events per message. Every decoder
must yield the same number of rows; ours and the reference must give identical tables.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import msgspec  # noqa: E402

from bench.gen_fleet import Counts, FleetOptions, generate, to_json_lines  # noqa: E402
from streams.jsonlines import decode_json_lines_reference, decode_json_messages  # noqa: E402


def cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, default=8_000)
    parser.add_argument("--minutes", type=int, default=30)
    parser.add_argument("--runs", type=int, default=3)
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

    contenders = {
        "reference (json + duplicate-key hook, before)": reference,
        "gpuledger now (decode_json_messages)": ours,
        "json.loads per line (no checks, no columns)": json_loads,
        "msgspec decode_lines to dicts, GC off (no checks, no columns)": msgspec_untyped_gc_off,
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
    import pyarrow as pa

    ours_table = ours_table.set_column(ours_table.num_columns - 1, "_raw", ours_table.column("_raw").cast(pa.string()))
    if not ours_table.equals(ref_table):
        raise SystemExit("gpuledger's table differs from the reference decoder's")
    print("  tables identical to the reference decoder's")


if __name__ == "__main__":
    main()
