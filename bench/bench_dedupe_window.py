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
batches of ``--batch`` as a consumer owning every partition would. Two fresh processes in the
same run: **before**, both hours exact (24 bytes an id), runs merged whatever their length (the
code before the tiers); **after**, the older hour frozen into the filter (``streams.idfilter``,
``--bits-per-id``) as ``EventWindow`` does, the newest exact with runs capped at
``HourIds.max_run_ids``.
Prints resident memory, the peak and CPU-s of each; for "after", the filter's bytes per id, a
no-false-negative check on every id of the filtered hour, the false-positive rate on 2M new ids,
and how often a batch holding ``--late-per-batch`` late events of the filtered hour (the
fleet's 0.1 % late events at national rate, batches of 50,000) would need a storage scan.
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


def national(batch: int, bits_per_id: int, late_per_batch: int) -> None:
    """Both windows at national density, each in a fresh process (so neither inherits the
    other's freed pages or the fleet generator's), in the same run."""
    import json
    import subprocess
    from datetime import date

    from accounting.registry import load_registry
    from bench.gen_fleet import DEFAULT_REGISTRY, FleetOptions, fleet

    devices = fleet(load_registry(DEFAULT_REGISTRY), date(2026, 11, 2), FleetOptions()).height
    per_hour = devices * 60
    print(f"national density: {devices:,} devices, {per_hour:,} ids an hour, 2 hours held = {2 * per_hour:,} ids")
    for mode in ("before", "after"):
        out = subprocess.run(
            [sys.executable, __file__, "--national-child", mode, "--ids", str(per_hour), "--batch", str(batch),
             "--bits-per-id", str(bits_per_id), "--late-per-batch", str(late_per_batch)],
            check=True, capture_output=True, text=True,
        ).stdout
        r = json.loads(out.splitlines()[-1])
        print(f"  {mode:6s} {r['what']}: resident {r['resident_mib']:,.0f} MiB for the window "
              f"({r['resident_mib'] * 2**20 / (2 * per_hour):.2f} bytes per id), peak of the process "
              f"{r['peak_mib']:,.0f} MiB (interpreter and libraries {r['base_mib']:,.0f} MiB), {r['cpu_s']:.1f} CPU-s")
        if mode == "after":
            print(f"         filter: {r['filter_bytes_per_id']:.3f} bytes per id ({bits_per_id} bits), built in "
                  f"{r['freeze_cpu_s']:.2f} CPU-s; every one of the hour's {per_hour:,} ids answers maybe: "
                  f"{r['no_false_negatives']}; false positives {r['fpr'] * 100:.3f} % of {r['fresh']:,} new ids")
            print(f"         a batch with {late_per_batch} late events of the filtered hour needs a storage scan "
                  f"{r['batches_with_maybe'] * 100:.1f} % of the time ({r['batches']:,} batches sampled)")


def national_child(mode: str, per_hour: int, batch: int, bits_per_id: int, late_per_batch: int) -> None:
    import json

    from streams.dedupe import FilteredHour, HourIds
    from streams.idfilter import IdFilter

    rng = np.random.default_rng(7)
    base = rss_mib("VmRSS")
    start = cpu_s()

    def hour_batches(seed: int):
        """The hour's ids as committed batches (the same ids again for the same seed)."""
        ids = np.random.default_rng(seed)
        for first in range(0, per_hour, batch):
            n = min(batch, per_hour - first)
            yield (ids.integers(0, 2**64 - 1, n, dtype=np.uint64), ids.integers(0, 2**64 - 1, n, dtype=np.uint64),
                   ids.integers(1, 2**64 - 1, n, dtype=np.uint64))

    def exact_hour(seed: int) -> HourIds:
        # before: runs merged whatever their length, as the code before the tiers did
        held = HourIds(max_run_ids=2**62) if mode == "before" else HourIds()
        for hi, lo, fp in hour_batches(seed):
            held.add(hi, lo, fp)
        return held

    result: dict[str, object] = {}
    if mode == "before":
        hours: list[object] = [exact_hour(1), exact_hour(2)]
        result["what"] = "two exact hours (24 B an id), runs uncapped"
    else:
        older = exact_hour(1)
        t = cpu_s()
        frozen = FilteredHour.freeze(older, lambda parts, count: IdFilter.build_from(parts, count, bits_per_id))
        result["freeze_cpu_s"] = cpu_s() - t
        del older
        hours = [frozen, exact_hour(2)]
        result["what"] = "the newest hour exact (runs capped) + the older one filtered"
    result["cpu_s"] = cpu_s() - start
    result["resident_mib"] = rss_mib("VmRSS") - base
    result["peak_mib"], result["base_mib"] = rss_mib("VmHWM"), base
    if mode == "after":  # checks after the memory is read: they allocate only a batch at a time
        result["filter_bytes_per_id"] = frozen.filter.nbytes / frozen.filter.ids
        result["no_false_negatives"] = all(bool(frozen.filter.maybe(hi, lo).all()) for hi, lo, _ in hour_batches(1))
        fresh = 2_000_000
        maybe = frozen.filter.maybe(rng.integers(0, 2**64 - 1, fresh, dtype=np.uint64),
                                    rng.integers(0, 2**64 - 1, fresh, dtype=np.uint64))
        result["fpr"], result["fresh"] = float(maybe.mean()), fresh
        per_batch = maybe[: fresh // late_per_batch * late_per_batch].reshape(-1, late_per_batch).any(axis=1)
        result["batches_with_maybe"], result["batches"] = float(per_batch.mean()), int(per_batch.size)
    assert len(hours) == 2
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ids", type=int, default=2_000_000)
    parser.add_argument("--batch", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--old", type=Path)
    parser.add_argument("--national", action="store_true", help="memory of two national hours instead")
    parser.add_argument("--bits-per-id", type=int, default=12, help="--national: the filter's size")
    parser.add_argument("--late-per-batch", type=int, default=16, help="--national: late events of the filtered hour a batch holds")
    parser.add_argument("--national-child", choices=("before", "after"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.national_child:
        national_child(args.national_child, args.ids, args.batch, args.bits_per_id, args.late_per_batch)
        return
    if args.national:
        national(args.batch, args.bits_per_id, args.late_per_batch)
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
