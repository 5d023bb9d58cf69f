"""Kafka → committed storage, CPU-seconds (user+sys, start-up included) per million events,
gpuledger against its peers in the same run, on both wires; peak RSS of each consumer.

    .venv/bin/python bench/bench_wire.py --peers PEERS_VENV [--gpus 16000 --minutes 60] [--runs 3]
    .venv/bin/python bench/bench_wire.py --gpus 29000 --runs 1 --max-batch-bytes 67108864 16777216   # the byte bound, before/after

``PEERS_VENV`` is a virtual environment outside the project with the peers' libraries
(``confluent-kafka orjson msgspec kafka-python crc32c pyarrow``). Starts its own single-node
broker (scripts/kafka.sh), generates the fleet's traffic with ``bench/gen_fleet.py`` (late
events, duplicates, partial intervals; 500 events per message), produces the same messages
as JSON Lines to one 4-partition topic and as Arrow IPC to another (zstd, through the
project's ``KafkaBus``), then drains each topic ``--runs`` times per consumer, each run a new
process with a new group: gpuledger (``bench/wire_ours.py``) and the peers
(``bench/wire_peers.py``). CPU comes from the kernel's accounting of the child (``wait4``), peak RSS from the
child's own ``VmHWM``. Every consumer must store exactly the fleet's distinct events, or the run fails.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_ingest import Broker  # noqa: E402
from bench.gen_fleet import Counts, FleetOptions, generate, to_json_lines  # noqa: E402
from gpuledger.settings import KafkaSettings  # noqa: E402
from streams.kafka import KafkaBus  # noqa: E402
from streams.wire import encode_arrow  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PEERS = {"json": ["kafka-python-json", "confluent-orjson", "confluent-msgspec"], "arrow": ["confluent-pyarrow"]}


def run_child(command: list[str]) -> tuple[dict, float, float, float]:
    """(its JSON line, CPU-s user+sys, peak RSS MiB, wall s) of one child process."""
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    out, err = child.stdout.read().decode(), child.stderr.read().decode()
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise SystemExit(f"{command[1]} failed ({child.returncode}): {err[-2000:]}")
    lines = [line for line in out.splitlines() if line.startswith("{")]
    got = json.loads(lines[-1])
    return got, usage.ru_utime + usage.ru_stime, got["peak_rss_mib"], wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=Path, help="virtual environment of the peers (left out: gpuledger only)")
    parser.add_argument("--gpus", type=int, default=16_000)
    parser.add_argument("--minutes", type=int, default=60)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--max-batch-records", type=int, default=50_000, help="gpuledger's setting (default: the settings' default)")
    parser.add_argument("--max-batch-bytes", type=int, nargs="+", default=[None],
                        help="gpuledger's byte bound per batch, one gpuledger variant each (default: the settings' default)")
    parser.add_argument("--wires", nargs="*", default=["json", "arrow"])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "wire.json")
    args = parser.parse_args()
    counts = Counts()
    options = FleetOptions(gpus=args.gpus, max_message_events=500)
    messages = list(generate(datetime(2026, 11, 2, tzinfo=UTC), args.minutes, options, counts=counts))
    print(f"fleet: {counts.events:,} events sent ({counts.distinct:,} distinct, {counts.duplicates:,} duplicates, "
          f"{counts.late:,} late) in {counts.messages:,} messages", flush=True)
    results: dict = {"events": counts.events, "distinct": counts.distinct, "runs": args.runs, "rows": []}
    with tempfile.TemporaryDirectory(prefix="bench-wire-") as tmp:
        broker = Broker(Path(tmp) / "kafka")
        bootstrap = broker.up()
        try:
            bus = KafkaBus(KafkaSettings(bootstrap=bootstrap, partitions=4))
            for wire in args.wires:
                topic = f"bench.wire.{wire}.{uuid.uuid4().hex[:6]}"
                bus.ensure_topics([topic])
                producer = bus.producer(topic)
                payload_bytes = 0
                for message in messages:
                    value = to_json_lines(message.events) if wire == "json" else encode_arrow(message.events)
                    payload_bytes += len(value)
                    producer.send(message.key, value)
                producer.flush()
                producer.close()
                print(f"{wire}: {payload_bytes / counts.events:.0f} bytes per event on the wire", flush=True)
                ours = [(f"gpuledger-{b >> 20}MiB" if b else "gpuledger", None, b) for b in args.max_batch_bytes]
                consumers = [*ours, *((peer, peer, None) for peer in (PEERS[wire] if args.peers else ()))]
                for name, peer, bound in consumers:
                    measured = []
                    for run in range(args.runs):
                        group = f"g-{uuid.uuid4().hex[:8]}"
                        target = Path(tmp) / f"{wire}-{name}-{run}"
                        if peer is None:
                            command = [sys.executable, "bench/wire_ours.py", "--bootstrap", bootstrap, "--topic", topic,
                                       "--group", group, "--data-dir", str(target),
                                       "--max-batch-records", str(args.max_batch_records)]
                            command += ["--max-batch-bytes", str(bound)] if bound else []
                        else:
                            command = [str(args.peers / "bin" / "python"), "bench/wire_peers.py", peer, "--bootstrap",
                                       bootstrap, "--topic", topic, "--group", group, "--out", str(target),
                                       "--expect", str(counts.events)]
                        got, cpu_s, rss_mib, wall_s = run_child(command)
                        if got["stored"] != counts.distinct or got["stored"] <= 0:
                            raise SystemExit(f"{name} on {wire} stored {got['stored']:,}, not the {counts.distinct:,} distinct events")
                        measured.append({"cpu_s": cpu_s, "rss_mib": rss_mib, "wall_s": wall_s})
                        print(f"  {wire:5s} {name:18s} run {run}: {cpu_s * 1e6 / counts.events:6.2f} CPU-s/M  "
                              f"peak RSS {rss_mib:7.0f} MiB  wall {wall_s:6.1f} s  stored {got['stored']:,}", flush=True)
                    best = min(m["cpu_s"] for m in measured)
                    row = {"wire": wire, "consumer": name, "cpu_s_per_million": best * 1e6 / counts.events,
                           "peak_rss_mib": max(m["rss_mib"] for m in measured), "runs": measured}
                    results["rows"].append(row)
                    print(f"{wire:5s} {name:18s} min {row['cpu_s_per_million']:.2f} CPU-s/M, peak RSS {row['peak_rss_mib']:.0f} MiB", flush=True)
        finally:
            broker.down()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
