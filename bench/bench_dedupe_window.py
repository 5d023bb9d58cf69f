"""The dedupe window's in-memory structure (``streams.dedupe.HourIds``): CPU-s per million ids
added and looked up, at one national hour's shape, against the code of an earlier commit.

    .venv/bin/python bench/bench_dedupe_window.py [--ids 2000000] [--batch 20000] [--old FILE]

Adds ``--ids`` random 128-bit ids in batches of ``--batch`` (as committed batches arrive) and,
before each add, looks the batch up (every id new, as in steady state), then looks up a batch of
ids already held (re-sends). ``--old`` is a copy of an older ``streams/dedupe.py`` (e.g.
``git show REV:streams/dedupe.py > old.py``), measured in the same run. Checks that both answer
identically. Prints CPU-s (user+sys) per million ids for add and lookup, minimum of ``--runs``.

``--national`` instead measures the window's memory at national density: the devices of the
whole programme (``bench/gen_fleet.py``'s fleet for 325,000 GPUs, MIG instances included)
× 60 intervals an hour, two hours held (the default ``dedupe_window_hours``), added in
batches of ``--batch`` as a consumer owning every partition would; prints resident memory
before and after and the peak.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def measure(hour_ids_type: type, ids: int, batch: int, seed: int) -> tuple[float, float, list[bool]]:
    rng = np.random.default_rng(seed)
    held = hour_ids_type()
    add_s = lookup_s = 0.0
    answers: list[bool] = []
    for _ in range(ids // batch):
        hi = rng.integers(0, 2**64 - 1, batch, dtype=np.uint64)
        lo = rng.integers(0, 2**64 - 1, batch, dtype=np.uint64)
        fp = rng.integers(1, 2**64 - 1, batch, dtype=np.uint64)
        t = cpu_s()
        found, _ = held.lookup(hi, lo)
        lookup_s += cpu_s() - t
        answers.append(bool(found.any()))
        t = cpu_s()
        held.add(hi, lo, fp)
        add_s += cpu_s() - t
        again = rng.integers(0, batch, batch // 10)
        t = cpu_s()
        found, stored = held.lookup(hi[again], lo[again])
        lookup_s += cpu_s() - t
        answers.append(bool(found.all() and (stored == fp[again]).all()))
    return add_s * 1e6 / ids, lookup_s * 1e6 / (ids * 1.1), answers


def rss_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def national(batch: int) -> None:
    from datetime import date

    from accounting.registry import load_registry
    from bench.gen_fleet import DEFAULT_REGISTRY, FleetOptions, fleet
    from streams.dedupe import HourIds

    devices = fleet(load_registry(DEFAULT_REGISTRY), date(2026, 11, 2), FleetOptions()).height
    per_hour = devices * 60
    rng = np.random.default_rng(7)
    before = rss_mib("VmRSS")
    hours = [HourIds(), HourIds()]
    for held in hours:
        for start in range(0, per_hour, batch):
            n = min(batch, per_hour - start)
            held.add(rng.integers(0, 2**64 - 1, n, dtype=np.uint64), rng.integers(0, 2**64 - 1, n, dtype=np.uint64),
                     rng.integers(1, 2**64 - 1, n, dtype=np.uint64))
    after = rss_mib("VmRSS")
    ids = sum(h.size for h in hours)
    print(f"national density: {devices:,} devices, {per_hour:,} ids an hour, 2 hours held = {ids:,} ids")
    print(f"  resident {after - before:,.0f} MiB for the window ({(after - before) * 2**20 / ids:.1f} bytes per id), "
          f"peak of the process {rss_mib('VmHWM'):,.0f} MiB (interpreter and libraries {before:,.0f} MiB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ids", type=int, default=2_000_000)
    parser.add_argument("--batch", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--old", type=Path)
    parser.add_argument("--national", action="store_true", help="memory of two national hours instead")
    args = parser.parse_args()
    if args.national:
        national(args.batch)
        return
    from streams.dedupe import HourIds

    kinds = {"now": HourIds}
    if args.old:
        spec = importlib.util.spec_from_file_location("old_dedupe", args.old)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules["old_dedupe"] = module
        spec.loader.exec_module(module)
        kinds["old"] = module.HourIds
    results: dict[str, tuple[float, float]] = {}
    reference = None
    for name, kind in kinds.items():
        runs = [measure(kind, args.ids, args.batch, seed=run) for run in range(args.runs)]
        answers = [r[2] for r in runs]
        if reference is None:
            reference = answers
        assert answers == reference, f"{name} answers differently"
        assert all(a is (i % 2 == 1) for r in answers for i, a in enumerate(r)), f"{name}: a wrong answer"
        results[name] = (min(r[0] for r in runs), min(r[1] for r in runs))
    print(f"{args.ids:,} ids in batches of {args.batch:,}; CPU-s per million (min of {args.runs})")
    for name, (add, lookup) in results.items():
        print(f"  {name:4s} add {add:.3f}  lookup {lookup:.3f}")


if __name__ == "__main__":
    main()
