"""National scale on one machine: a consumer's memory as one day's events pile up, and its speed.

Two measurements, each a subprocess per variant so peak RSS is the variant's own:

``memory``  one consumer (``BatchProcessor`` fed straight from ``bench.gen_fleet``: the bus is
            left out so the generator is the only other cost) processes one KST day of a
            simulated fleet; at each checkpoint (events processed) it prints its peak RSS,
            elapsed and CPU seconds and the dedupe window's size. ``--code old`` runs the same
            driver on another checkout (the code before this change: a Python set of ids per
            KST date, raw + hourly in a journaled transaction) for the in-run comparison.
``kafka``   events published to a 4-partition topic on the project's Kafka broker, consumed
            into a bucket on the project's S3 server by 1, then 2 ``gpuledger consume``
            processes in one group (fresh group and prefix each): events/s and CPU-seconds per
            million events.

    python bench/bench_scale.py memory --events 1000000 5000000 20000000 50000000
    python bench/bench_scale.py memory --code old --old-tree /tmp/gl-old --events 1000000 5000000
    python bench/bench_scale.py memory --window exact --events 1000000 5000000   # every dedupe hour exact
    python bench/bench_scale.py kafka --events 2000000

Results go to docs/BENCHMARKS.md ("Scale") by hand, with the machine and the command.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DAY_START = datetime(2026, 11, 1, 15, 0, tzinfo=UTC)  # 00:00 KST on 2026-11-02


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_memory(events_checkpoints: list[int], gpus: int, data_dir: Path, batch_events: int, window: str = "tiered") -> None:
    """The driver (runs on whichever code PYTHONPATH names): prints one JSON line per checkpoint."""
    from bench.gen_fleet import Counts, FleetOptions, generate
    from gpuledger.wiring import accounts_of
    from accounting.registry import load_registry
    from storage.dataset import Store
    from streams.pipeline import BatchProcessor
    from streams.wire import encode_arrow

    import accounting.registry as code  # the registry of the code under test (old or new format)

    registry = load_registry(Path(code.__file__).resolve().parents[1] / "examples" / "registry.toml")
    store = Store(data_dir)
    if window == "exact":  # every hour of the window exact, as before the filtered tier (streams/dedupe.py)
        from streams.dedupe import EventWindow

        processor = BatchProcessor(store, accounts_of(registry), EventWindow(store, 2, filter_after_minutes=48 * 60))
    else:
        processor = BatchProcessor(store, accounts_of(registry))
    positional = "positions" in inspect.signature(processor.process).parameters
    options = FleetOptions(gpus=gpus, late_fraction=0.001, duplicate_fraction=0.002)
    counts = Counts()
    target = max(events_checkpoints)
    checkpoints = sorted(events_checkpoints)
    started, cpu0 = time.perf_counter(), _cpu_s()
    pending: list[tuple[str, bytes]] = []
    pending_events = 0
    offset = 0
    done = 0
    for message in generate(DAY_START, 24 * 60, options, registry, counts):
        pending.append((f"gpu.usage.v1/0@{offset}", encode_arrow(message.events)))
        offset += 1
        pending_events += message.events.num_rows
        if pending_events < batch_events and counts.events < target:
            continue
        if positional:
            from streams.pipeline import Position

            positions = [Position("bench/gpu.usage.v1/0", int(s.rsplit("@", 1)[1])) for s, _ in pending]
            processor.process(pending, positions)
        else:
            processor.process(pending)
        done += pending_events
        pending, pending_events = [], 0
        while checkpoints and done >= checkpoints[0]:
            window = getattr(processor, "window", None)
            print(json.dumps({
                "events": done, "checkpoint": checkpoints.pop(0),
                "elapsed_s": round(time.perf_counter() - started, 1), "cpu_s": round(_cpu_s() - cpu0, 1),
                "peak_rss_mb": round(_rss_mb()), "window_ids": getattr(window, "ids_held", None),
                "window_mib": round(getattr(window, "bytes_held", 0) / 2**20, 1),
                "window_stats": dataclasses.asdict(window.stats) if hasattr(window, "stats") else None,
            }), flush=True)
        if not checkpoints:
            break
    if positional:
        from storage.rollup import roll_up

        t0, c0 = time.perf_counter(), _cpu_s()
        result = roll_up(store)
        print(json.dumps({"rollup_s": round(time.perf_counter() - t0, 1), "rollup_cpu_s": round(_cpu_s() - c0, 1),
                          "rollup_rows": result.rows, "peak_rss_mb": round(_rss_mb())}), flush=True)


def memory(args: argparse.Namespace) -> int:
    tree = REPO if args.code == "new" else Path(args.old_tree)
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), str(REPO)])}
        command = [sys.executable, str(Path(__file__).resolve()), "_driver", "--gpus", str(args.gpus),
                   "--batch-events", str(args.batch_events), "--data-dir", str(Path(tmp) / "data"),
                   "--window", args.window, "--events", *map(str, args.events)]
        print(f"# code={args.code} window={args.window} gpus={args.gpus} batch_events={args.batch_events}", flush=True)
        return subprocess.run(command, env=env, cwd=tmp, check=False).returncode


def kafka(args: argparse.Namespace) -> int:
    """Publish once; consume with 1 then 2 processes into fresh S3 prefixes."""
    env = dict(os.environ)
    kafka_up = subprocess.run(["bash", str(REPO / "scripts/kafka.sh"), "up"], capture_output=True, text=True, check=True)
    bootstrap = [line.strip() for line in kafka_up.stdout.splitlines() if line.strip().startswith("127.0.0.1:")][-1]
    s3_up = subprocess.run(["bash", str(REPO / "scripts/s3.sh"), "up"], capture_output=True, text=True, check=True)
    for line in s3_up.stdout.splitlines():
        if line.startswith("export "):
            key, _, value = line[len("export "):].partition("=")
            env[key] = value.strip("'\"")
    topic = f"bench.scale.{int(time.time())}"
    env |= {"GPULEDGER_KAFKA_BOOTSTRAP": bootstrap, "GPULEDGER_KAFKA__USAGE_TOPIC": topic,
            "GPULEDGER_KAFKA__QUARANTINE_TOPIC": topic + ".q", "GPULEDGER_KAFKA__PARTITIONS": "4",
            "GPULEDGER_CONFIG": ""}
    minutes = max(1, args.events // max(1, int(args.gpus * 1.15)))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "bench.gen_fleet", "--gpus", str(args.gpus), "--minutes", str(minutes),
                    "--publish", "--bus", "kafka"], env=env, cwd=REPO, check=True)
    print(f"# published {minutes} minutes of {args.gpus:,} GPUs in {time.perf_counter() - t0:.1f} s", flush=True)
    bucket = env.get("S3_BUCKET", "gpuledger")
    for members in (1, 2):
        group = f"bench-{members}-{int(time.time())}"
        data_dir = f"s3://{bucket}/bench-{group}"
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, "-m", "gpuledger", "consume", "--bus", "kafka", "--until-idle",
                                   "--data-dir", data_dir, "--registry", str(REPO / "examples" / "registry.toml")],
                                  env=env | {"GPULEDGER_KAFKA__CONSUMER_GROUP": group},
                                  cwd=REPO, stdout=subprocess.PIPE, text=True)
                 for _ in range(members)]
        outs = [p.communicate()[0] for p in procs]
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        accepted = sum(int(o.split("consume: ", 1)[1].split(" events", 1)[0].replace(",", "")) for o in outs if "consume: " in o)
        print(json.dumps({"consumers": members, "accepted": accepted, "wall_s": round(wall, 1),
                          "events_per_s": round(accepted / wall), "cpu_s_per_million": round(cpu / accepted * 1e6, 1)}),
              flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    mem = sub.add_parser("memory", help="peak RSS of one consumer as one day's events pile up")
    mem.add_argument("--events", type=int, nargs="+", default=[1_000_000, 5_000_000, 20_000_000, 50_000_000])
    mem.add_argument("--gpus", type=int, default=33_000, help="fleet size (33,000 GPUs ≈ 50M events a day)")
    mem.add_argument("--batch-events", type=int, default=100_000)
    mem.add_argument("--code", choices=("new", "old"), default="new")
    mem.add_argument("--old-tree", default="/tmp/gl-old", help="checkout of the code to compare (git worktree add)")
    mem.add_argument("--window", choices=("tiered", "exact"), default="tiered",
                     help="the dedupe window: the newest hour exact, older hours filtered (default), or every hour exact")
    kaf = sub.add_parser("kafka", help="events/s and CPU-s per million through Kafka into S3, 1 and 2 consumers")
    kaf.add_argument("--events", type=int, default=2_000_000)
    kaf.add_argument("--gpus", type=int, default=20_000)
    drv = sub.add_parser("_driver")
    drv.add_argument("--events", type=int, nargs="+", required=True)
    drv.add_argument("--gpus", type=int, required=True)
    drv.add_argument("--batch-events", type=int, required=True)
    drv.add_argument("--data-dir", type=Path, required=True)
    drv.add_argument("--window", choices=("tiered", "exact"), default="tiered")
    args = parser.parse_args(argv)
    if args.what == "_driver":
        run_memory(args.events, args.gpus, args.data_dir, args.batch_events, args.window)
        return 0
    return memory(args) if args.what == "memory" else kafka(args)


if __name__ == "__main__":
    sys.exit(main())
