"""Does a month cost the same when a year of history lies beside it? (close, verify, replay)

Month after month, the same simulated fleet (``bench.gen_fleet``, hourly events) goes through
the real pipeline (``BatchProcessor`` with offsets, roll-up, compaction), then the month is
closed, verified and its quarantine replayed; each step is timed. The goal is flat: the
twelfth month should cost what the first did.

    python bench/bench_history.py --months 12 --gpus 200
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--months", type=int, default=12)
    parser.add_argument("--gpus", type=int, default=200)
    args = parser.parse_args(argv)

    from accounting.close import close_month
    from accounting.registry import load_registry
    from bench.gen_fleet import FleetOptions, generate
    from gpuledger.wiring import accounts_of
    from storage.compaction import compact_dataset
    from storage.dataset import Store
    from storage.manifest import verify
    from storage.rollup import roll_up
    from streams.pipeline import BatchProcessor, Position
    from streams.replay import replay_quarantine
    from streams.wire import encode_arrow

    registry = load_registry(REPO / "examples" / "registry.toml")
    with tempfile.TemporaryDirectory(prefix="bench-history-") as tmp:
        store = Store(Path(tmp) / "data")
        processor = BatchProcessor(store, accounts_of(registry))
        offset = 0
        for index in range(args.months):
            year, month = 2026 + (index + 1) // 12, (index + 1) % 12 + 1  # 2026-02 … : KST months
            period = f"{year}-{month:02d}"
            start = datetime(year, month, 1, tzinfo=UTC).replace(hour=0) - (datetime(2026, 1, 1, 9, tzinfo=UTC) - datetime(2026, 1, 1, tzinfo=UTC))
            days = 28
            options = FleetOptions(gpus=args.gpus, interval_s=3600, sample_period_s=60, late_fraction=0.0,
                                   duplicate_fraction=0.001, seed=index)
            batch, positions = [], []
            t0 = time.perf_counter()
            events = 0
            for message in generate(start, days * 24 * 60, options, registry):
                batch.append((f"gpu.usage.v1/0@{offset}", encode_arrow(message.events)))
                positions.append(Position("bench/gpu.usage.v1/0", offset))
                offset += 1
                events += message.events.num_rows
                if len(batch) >= 50:
                    processor.process(batch, positions)
                    batch, positions = [], []
            if batch:
                processor.process(batch, positions)
            ingest_s = time.perf_counter() - t0
            timings = {}
            for name, step in (
                ("rollup_s", lambda: roll_up(store)),
                ("compact_s", lambda: [compact_dataset(store, d) for d in ("raw", "quarantine")]),
                ("close_s", lambda: close_month(store, registry, period)),
                ("verify_s", lambda: verify(store)),
                ("replay_s", lambda: replay_quarantine(store, processor, period=period)),
            ):
                t = time.perf_counter()
                result = step()
                timings[name] = round(time.perf_counter() - t, 2)
                if name == "verify_s":
                    assert result.ok, result.differences
            print(json.dumps({"month": index + 1, "period": period, "events": events,
                              "ingest_s": round(ingest_s, 1), **timings}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
