"""Cost of verified reads in the dedupe (issue 18, item 7): a fresh process loads one hour's
ids from raw (the first lookup of an hour), which now hashes each file against its commit.

    PYTHONPATH=. .venv/bin/python bench/bench_verified_lookup.py make /tmp/vdata 500000
    PYTHONPATH=. .venv/bin/python bench/bench_verified_lookup.py look /tmp/vdata

The peer is ``look`` run against a checkout from before the change (``PYTHONPATH=OLD``) on
the same data directory, in the same session."""
import json, resource, sys, time
from pathlib import Path
import polars as pl
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "unit"))

def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF); return r.ru_utime + r.ru_stime

if sys.argv[1] == "make":
    from spine_events import ACCOUNTS, event, jsonl
    from storage.dataset import Store
    from streams.pipeline import BatchProcessor
    data, n = Path(sys.argv[2]), int(sys.argv[3])
    bp = BatchProcessor(Store(data), ACCOUNTS)
    per_batch = 50_000
    for b in range(n // per_batch):
        evs = [event(f"2026-11-02T03:{(i % 60):02d}:00Z", node=f"n{b}-{i // 60}", gpu=f"GPU-{i // 60}")
               for i in range(b * 0, per_batch)]
        msgs = [(f"m{b}-{j}", jsonl(*evs[j:j + 500])) for j in range(0, len(evs), 500)]
        bp.process(msgs)
    print("made", len(Store(data).files("raw")), "files")
else:
    from storage.dataset import Store
    from streams.dedupe import EventWindow
    import streams.dedupe as d
    data = Path(sys.argv[2])
    store = Store(data)
    files = store.files("raw")
    rows = pl.read_parquet(files[0], columns=["interval_start", "event_id"]).head(1000)
    w = EventWindow(store)
    t0, c0 = time.perf_counter(), cpu()
    seen, _ = w.lookup(rows, pl.Series("fp", [0] * rows.height, dtype=pl.UInt64))
    print(json.dumps({"code": d.__file__, "files": len(files), "bytes": sum(Path(f).stat().st_size for f in files),
                      "ids_loaded": w.ids_held, "cpu_s": round(cpu() - c0, 3), "wall_s": round(time.perf_counter() - t0, 3),
                      "seen": int(seen.sum())}))
