"""Does a batch cost more when quarantine holds a million refused lines? (goal: flat)

Twenty batches of 10,000 valid events are timed on an empty store, then again after
1,000,000 refused lines were committed to ``quarantine`` (10 commits of 100,000), then again
after 1,000,000 more. Before this change every batch checked its refused lines against every
refused line ever (``is_in`` over 1M ids: 2.06 s per batch even when nothing was refused).

    python bench/bench_quarantine_growth.py
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "unit"))


def main() -> int:
    import polars as pl
    from spine_events import ACCOUNTS, event, jsonl

    from storage.dataset import Store
    from storage.schemas import QUARANTINE
    from streams.pipeline import BatchProcessor, Position

    with tempfile.TemporaryDirectory() as tmp:
        store = Store(tmp)
        processor = BatchProcessor(store, ACCOUNTS)
        offset = 0

        def timed(label: str, hour: int) -> None:
            nonlocal offset
            seconds = []
            for b in range(20):
                events = [event(f"2026-11-02T{hour:02d}:{b:02d}:00Z", gpu=f"GPU-{g:05d}") for g in range(10_000)]
                started = time.perf_counter()
                processor.process([(f"t/0@{offset}", jsonl(*events))], [Position("bench/t/0", offset)])
                seconds.append(time.perf_counter() - started)
                offset += 1
            print(f"{label}: median {statistics.median(seconds):.3f} s per 10,000-event batch", flush=True)

        timed("quarantine empty", 1)
        for fill in (1, 2):
            for chunk in range(10):
                n = 100_000
                frame = pl.DataFrame(
                    {"period": ["2026-11"] * n, "quarantine_id": [f"{fill:02d}{chunk:02d}{i:028x}" for i in range(n)],
                     "reason_code": ["not_json"] * n, "reason": ["line is not JSON"] * n, "source": ["bench"] * n,
                     "raw": ["{"] * n},
                ).with_columns([pl.lit(None, dtype=pl.from_arrow(QUARANTINE.empty_table()).schema[c]).alias(c)
                                for c in ("event_id", "entity", "project", "gpu_model", "interval_start", "gpu_microseconds")])
                store.commit_files("quarantine", store.write_files("quarantine", frame, f"fill{fill}-{chunk}"))
            timed(f"quarantine holds {fill:,}M refused lines", 1 + fill)
    return 0


if __name__ == "__main__":
    sys.exit(main())
