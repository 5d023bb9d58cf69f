"""Ingest on the real broker: events/s from a Kafka topic to committed Parquet, one consumer.

    .venv/bin/python bench/bench_ingest.py [--events 1000000] [--bootstrap HOST:PORT]

Starts its own single-node broker (scripts/kafka.sh, a temporary home, free ports) unless
``--bootstrap`` is given. For each message layout (one event per message; a node's interval,
8 events, per message; up to 500 events per message as ``ingest --wire json`` sends them; the
same, one Arrow IPC batch per message, as ``ingest`` sends them by default) it:

1. produces the events through ``streams.kafka.KafkaBus`` (acks=all, idempotent, zstd) and
   times send + flush;
2. consumes them with one ``streams.consumer.StreamConsumer`` (decode, validate, dedupe,
   hourly aggregation, raw + hourly Parquet in one transaction, offset commit per batch)
   into a fresh data directory;
3. consumes them again, in the same run, with the peer baseline: a plain kafka-python
   consumer that polls, ``json.loads`` each event and sums ``gpu_seconds`` per
   (entity, project) in a dict; no validation, no dedupe, nothing written, nothing committed
   (for Arrow messages: reads each IPC stream with pyarrow and sums with a pyarrow group-by);
4. reads them a third time through the bus alone (``KafkaBus`` consumer polls, nothing
   processed): the ceiling the bus puts on any consumer;
5. decodes the same payloads from memory with Polars ``read_ndjson`` alone (Arrow: pyarrow
   IPC read and one ``polars.from_arrow``): the floor cost of the encoding for any consumer.

Both consumers join their groups before anything is produced; their rates are measured from
the start of consumption to the last committed batch (ours) or the last event summed (the
baseline); totals are checked exactly against the input.
Prints a table and writes ``bench/out/ingest.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc as ipc
from kafka import KafkaConsumer  # the peer baseline talks to kafka-python directly

from accounting.registry import load_registry
from gpuledger.settings import KafkaSettings
from gpuledger.wiring import accounts_of
from storage.dataset import Store
from streams.consumer import StreamConsumer
from streams.kafka import KafkaBus
from streams.pipeline import BatchProcessor
from streams.schema import UsageEvent, format_timestamp, make_event_id, to_microseconds
from streams.validate import WIRE_SCHEMA
from streams.wire import encode_arrow

REPO = Path(__file__).resolve().parents[1]
START_S = 1_790_000_000 // 3600 * 3600  # an hour boundary in 2026


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    def __init__(self, home: Path):
        self.env = {
            **os.environ,
            "KAFKA_HOME_DIR": str(home),
            "KAFKA_PORT": str(_free_port()),
            "KAFKA_CONTROLLER_PORT": str(_free_port()),
        }

    def up(self) -> str:
        done = subprocess.run(["bash", str(REPO / "scripts/kafka.sh"), "up"], env=self.env,
                              capture_output=True, text=True, check=True)
        return done.stdout.strip()

    def down(self) -> None:
        subprocess.run(["bash", str(REPO / "scripts/kafka.sh"), "down"], env=self.env, check=False)


def make_events(count: int) -> list[tuple[str, list[bytes]]]:
    """``count`` valid events as (node, JSON lines of one interval of its 8 GPUs)."""
    registry = load_registry(REPO / "examples" / "registry.toml")
    owners = sorted(
        (p.entity, name, sorted({a.gpu_model for a in registry.entities[p.entity].allocations})[0])
        for name, p in registry.projects.items()
    )
    nodes = max(1, count // (8 * 60))  # an hour of 1-minute intervals per node
    out: list[tuple[str, list[bytes]]] = []
    made = 0
    for minute in range(10_000):
        start = format_timestamp_s(START_S + 60 * minute)
        end = format_timestamp_s(START_S + 60 * minute + 60)
        for n in range(nodes):
            node = f"node-{n:05d}"
            entity, project, model = owners[n % len(owners)]
            lines = []
            for g in range(8):
                gpu = f"GPU-{n:08d}-0000-0000-0000-{g:012d}"
                event = UsageEvent(
                    event_id=make_event_id(node, gpu, start), site="bench", node=node,
                    gpu_uuid=gpu, device_uuid=gpu, gpu_model=model, mig_profile=None,
                    gpu_fraction=1.0, entity=entity, project=project, job_id=f"slurm:{n}",
                    interval_start=start, interval_end=end, gpu_seconds=60.0,
                    busy_gpu_seconds=37.5, energy_joules=42_000.0, samples=6, expected_samples=6,
                )
                lines.append(event.to_json().encode())
            out.append((node, lines))
            made += 8
            if made >= count:
                return out
    return out


def format_timestamp_s(epoch_s: int) -> str:
    from datetime import UTC, datetime

    return format_timestamp(datetime.fromtimestamp(epoch_s, UTC))


def messages_of(intervals: list[tuple[str, list[bytes]]], events_per_message: int) -> list[tuple[str, bytes]]:
    if events_per_message == 8:
        return [(node, b"\n".join(lines)) for node, lines in intervals]
    if events_per_message == 1:
        return [(node, line) for node, lines in intervals for line in lines]
    by_node: dict[str, list[bytes]] = defaultdict(list)
    for node, lines in intervals:
        by_node[node].extend(lines)
    out = []
    for node, lines in by_node.items():
        for i in range(0, len(lines), events_per_message):
            out.append((node, b"\n".join(lines[i : i + events_per_message])))
    return out


def as_arrow(messages: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """The same messages, each as one Arrow IPC batch (what ``ingest --wire arrow`` sends)."""
    import io

    import polars as pl

    return [
        (key, encode_arrow(pl.read_ndjson(io.BytesIO(value), schema=WIRE_SCHEMA).to_arrow()))
        for key, value in messages
    ]


def produce(bus: KafkaBus, topic: str, messages: list[tuple[str, bytes]]) -> float:
    producer = bus.producer(topic)
    producer.send(*messages[0])  # connect outside the timing
    producer.flush()
    started = time.perf_counter()
    for key, value in messages[1:]:
        producer.send(key, value)
    producer.flush()
    elapsed = time.perf_counter() - started
    producer.close()
    return elapsed


def joined_stream_consumer(bus: KafkaBus, topic: str, data_dir: Path):
    """A StreamConsumer whose group is joined already (on the empty topic)."""
    registry = load_registry(REPO / "examples" / "registry.toml")
    consumer = bus.consumer(topic, f"bench-{uuid.uuid4().hex[:8]}")
    assert consumer.poll_batch(1, 0.5) == []  # joins the group; nothing produced yet
    stream = StreamConsumer(
        consumer, BatchProcessor(Store(data_dir), accounts_of(registry)),
        max_batch_records=50_000, poll_timeout_s=0.5,
    )
    return stream, consumer


def run_stream_consumer(stream: StreamConsumer, consumer, events: int) -> dict:
    marks: list[float] = []
    started = time.perf_counter()
    totals = stream.run(until_idle=True, idle_polls=2, on_batch=lambda _r: marks.append(time.perf_counter()))
    consumer.close()
    if totals.accepted != events or totals.refused:
        raise SystemExit(f"stream consumer stored {totals.accepted} of {events} ({totals.refused} refused)")
    seconds = marks[-1] - started
    return {
        "events": totals.accepted,
        "duplicates": totals.duplicates,
        "batches": totals.batches,
        "seconds": seconds,
        "events_per_s": totals.accepted / seconds,
    }


def run_bus_only(consumer, messages: int, events: int) -> dict:
    """The bus alone: KafkaBus consumer polls (fetch, zstd, checksums), no processing."""
    got = 0
    started = time.perf_counter()
    while got < messages:
        got += len(consumer.poll_batch(50_000, 0.5))
        if time.perf_counter() - started > 600:
            break
    seconds = time.perf_counter() - started
    consumer.close()
    if got != messages:
        raise SystemExit(f"bus-only consumer read {got} of {messages} messages")
    return {"events": events, "seconds": seconds, "events_per_s": events / seconds}


def json_decode_floor(messages: list[tuple[str, bytes]], events: int) -> dict:
    """Polars ``read_ndjson`` over the same payloads, 50k-event batches, from memory: what
    any consumer of JSON Lines pays before doing anything with the events."""
    import io

    import polars as pl

    per_batch = max(1, 50_000 * len(messages) // events)
    batches = [b"\n".join(v for _, v in messages[i : i + per_batch]) for i in range(0, len(messages), per_batch)]
    started = time.perf_counter()
    rows = sum(pl.read_ndjson(io.BytesIO(batch)).height for batch in batches)
    seconds = time.perf_counter() - started
    if rows != events:
        raise SystemExit(f"read_ndjson decoded {rows} of {events} events")
    return {"events": rows, "seconds": seconds, "events_per_s": rows / seconds}


def arrow_decode_floor(messages: list[tuple[str, bytes]], events: int) -> dict:
    """pyarrow IPC reads of the same payloads and one ``polars.from_arrow`` per 50k-event batch."""
    import polars as pl

    per_batch = max(1, 50_000 * len(messages) // events)
    started = time.perf_counter()
    rows = 0
    for i in range(0, len(messages), per_batch):
        tables = [ipc.open_stream(pa.py_buffer(v)).read_all() for _, v in messages[i : i + per_batch]]
        rows += pl.from_arrow(pa.concat_tables(tables).combine_chunks()).height
    seconds = time.perf_counter() - started
    if rows != events:
        raise SystemExit(f"Arrow decode read {rows} of {events} events")
    return {"events": rows, "seconds": seconds, "events_per_s": rows / seconds}


def joined_baseline(bootstrap: str, topic: str) -> KafkaConsumer:
    consumer = KafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=f"baseline-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest", enable_auto_commit=False, session_timeout_ms=300_000,
        max_poll_interval_ms=900_000,
    )
    for _ in range(100):
        consumer.poll(timeout_ms=100)
        if consumer.assignment():
            return consumer
    raise SystemExit("baseline consumer did not join its group")


def run_baseline(consumer: KafkaConsumer, events: int, truth_us: int, arrow: bool = False) -> dict:
    sums: dict[tuple[str, str], float] = defaultdict(float)
    seen = 0
    started = time.perf_counter()
    while seen < events:
        polled = consumer.poll(timeout_ms=500, max_records=10_000)
        for records in polled.values():
            for record in records:
                if arrow:
                    table = ipc.open_stream(pa.py_buffer(record.value)).read_all()
                    grouped = table.group_by(["entity", "project"]).aggregate([("gpu_seconds", "sum")])
                    for entity, project, total in zip(*(grouped.column(i).to_pylist() for i in range(3)), strict=True):
                        sums[(entity, project)] += total
                    seen += table.num_rows
                    continue
                for line in record.value.split(b"\n"):
                    d = json.loads(line)
                    sums[(d["entity"], d["project"])] += d["gpu_seconds"]
                    seen += 1
        if time.perf_counter() - started > 600:
            break
    seconds = time.perf_counter() - started
    consumer.close()
    total_us = sum(to_microseconds(v) for v in sums.values())
    if seen != events or total_us != truth_us:
        raise SystemExit(f"baseline saw {seen} of {events} events, {total_us} of {truth_us} µs")
    return {"events": seen, "seconds": seconds, "events_per_s": seen / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000, help="events per layout")
    parser.add_argument("--single-events", type=int, default=200_000,
                        help="events for the one-event-per-message layout (slow by design)")
    parser.add_argument("--bootstrap", help="use this broker instead of starting one")
    parser.add_argument("--partitions", type=int, default=12)
    parser.add_argument("--skip", nargs="*", default=[], choices=["json", "arrow"],
                        help="leave out the layouts of these encodings")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "ingest.json")
    args = parser.parse_args()

    broker = None
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        if args.bootstrap:
            bootstrap = args.bootstrap
        else:
            broker = Broker(Path(tmp) / "kafka")
            bootstrap = broker.up()
        try:
            bus = KafkaBus(KafkaSettings(bootstrap=bootstrap, partitions=args.partitions))
            rows = []
            for label, per_message, count, wire in (
                ("1 event / message", 1, args.single_events, "json"),
                ("8 events / message (a node's interval)", 8, args.events, "json"),
                ("≤500 events / message (ingest --wire json)", 500, args.events, "json"),
                ("≤500 events / message, Arrow IPC (ingest)", 500, args.events, "arrow"),
            ):
                if wire in args.skip:
                    continue
                intervals = make_events(count)
                n_events = sum(len(lines) for _, lines in intervals)
                truth_us = n_events * to_microseconds(60.0)
                messages = messages_of(intervals, per_message)
                if wire == "arrow":
                    messages = as_arrow(messages)
                topic = f"bench.ingest.{wire}.{per_message}.{uuid.uuid4().hex[:6]}"
                bus.ensure_topics([topic])
                stream, consumer = joined_stream_consumer(bus, topic, Path(tmp) / f"data-{wire}-{per_message}")
                baseline = joined_baseline(bootstrap, topic)
                bus_only = bus.consumer(topic, f"bus-only-{uuid.uuid4().hex[:8]}")
                assert bus_only.poll_batch(1, 0.5) == []
                produce_s = produce(bus, topic, messages)
                ours = run_stream_consumer(stream, consumer, n_events)
                peer = run_baseline(baseline, n_events, truth_us, arrow=wire == "arrow")
                ceiling = run_bus_only(bus_only, len(messages), n_events)
                decode = (arrow_decode_floor if wire == "arrow" else json_decode_floor)(messages, n_events)
                row = {
                    "layout": label, "wire": wire, "events": n_events, "messages": len(messages),
                    "bytes": sum(len(v) for _, v in messages),
                    "produce_events_per_s": (n_events - per_message) / produce_s,
                    "produce_messages_per_s": (len(messages) - 1) / produce_s,
                    "stream_consumer": ours, "baseline": peer, "bus_only": ceiling,
                    "decode_alone": decode,
                    "ratio": ours["events_per_s"] / peer["events_per_s"],
                }
                rows.append(row)
                print(
                    f"{label:42s} {n_events:>9,} ev  produce {row['produce_events_per_s']:>10,.0f} ev/s "
                    f"({row['produce_messages_per_s']:>8,.0f} msg/s)  StreamConsumer "
                    f"{ours['events_per_s']:>10,.0f} ev/s  baseline {peer['events_per_s']:>10,.0f} ev/s  "
                    f"ratio {row['ratio']:.2f}  (bus alone {ceiling['events_per_s']:>10,.0f} ev/s, "
                    f"decode alone {decode['events_per_s']:>10,.0f} ev/s)",
                    flush=True,
                )
        finally:
            if broker is not None:
                broker.down()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"bootstrap_started_here": broker is not None, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
