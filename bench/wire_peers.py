"""The peer consumers of ``bench/bench_wire.py``: what a team would write without gpuledger.

Each one polls a topic, decodes every event, drops ids it has seen (a Python set, unbounded),
writes each batch as one plain zstd Parquet file and commits the offsets after the write. No
validation rules, no event-id check, no quarantine, no Delta log. Runs in its own virtual
environment (the peers' libraries are not the project's):

    PEERS/bin/python bench/wire_peers.py KIND --bootstrap HOST:PORT --topic T --group G --out DIR --expect N

KIND: ``kafka-python-json`` (kafka-python + ``json.loads``), ``confluent-orjson``,
``confluent-msgspec`` (a typed ``msgspec.Struct``), ``confluent-pyarrow`` (Arrow IPC messages).
Prints one JSON line: events stored, duplicates dropped, gpu_seconds summed.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

NAMES = ("schema_version", "event_id", "site", "node", "gpu_uuid", "device_uuid", "gpu_model", "mig_profile",
         "gpu_fraction", "entity", "project", "job_id", "interval_start", "interval_end", "gpu_seconds",
         "busy_gpu_seconds", "energy_joules", "samples", "expected_samples", "flags")


class Sink:
    def __init__(self, out: Path):
        self.out, self.seen, self.files, self.stored, self.dropped, self.gpu_seconds = out, set(), 0, 0, 0, 0.0

    def write(self, table: pa.Table) -> None:
        ids = table.column("event_id").to_pylist()
        keep, seen = [], self.seen
        for i, event_id in enumerate(ids):
            if event_id in seen:
                keep.append(False)
            else:
                seen.add(event_id)
                keep.append(True)
        if not all(keep):
            self.dropped += keep.count(False)
            table = table.filter(pa.array(keep))
        pq.write_table(table, self.out / f"part-{self.files:06d}.parquet", compression="zstd")
        self.files += 1
        self.stored += table.num_rows
        self.gpu_seconds += sum(v for v in table.column("gpu_seconds").to_pylist())


def table_of_dicts(rows: list[dict]) -> pa.Table:
    return pa.table({name: [row.get(name) for row in rows] for name in NAMES})


def run_kafka_python(args: argparse.Namespace, sink: Sink) -> None:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(args.topic, bootstrap_servers=args.bootstrap, group_id=args.group,
                             auto_offset_reset="earliest", enable_auto_commit=False)
    idle = 0
    while sink.stored + sink.dropped < args.expect or idle < 1:
        polled = consumer.poll(timeout_ms=1000, max_records=50_000)
        if not polled:
            idle += 1
            if sink.stored + sink.dropped >= args.expect:
                break
            continue
        rows = [json.loads(line) for records in polled.values() for r in records for line in r.value.splitlines() if line.strip()]
        sink.write(table_of_dicts(rows))
        consumer.commit()
    consumer.close()


def run_confluent(args: argparse.Namespace, sink: Sink, kind: str) -> None:
    from confluent_kafka import Consumer

    consumer = Consumer({"bootstrap.servers": args.bootstrap, "group.id": args.group,
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([args.topic])
    if kind == "confluent-orjson":
        import orjson

        def decode(values: list[bytes]) -> pa.Table:
            return table_of_dicts([orjson.loads(line) for v in values for line in v.splitlines() if line.strip()])
    elif kind == "confluent-msgspec":
        import msgspec

        class Event(msgspec.Struct, gc=False):
            schema_version: int
            event_id: str
            site: str
            node: str
            gpu_uuid: str
            device_uuid: str
            gpu_model: str
            mig_profile: str | None
            gpu_fraction: float
            entity: str
            project: str
            job_id: str | None
            interval_start: str
            interval_end: str
            gpu_seconds: float
            busy_gpu_seconds: float
            energy_joules: float | None
            samples: int
            expected_samples: int
            flags: list[str]

        decoder = msgspec.json.Decoder(Event)

        def decode(values: list[bytes]) -> pa.Table:
            gc.disable()
            rows = [decoder.decode(line) for v in values for line in v.splitlines() if line.strip()]
            gc.enable()
            columns = zip(*map(msgspec.structs.astuple, rows), strict=True)
            return pa.table(dict(zip(NAMES, (list(c) for c in columns), strict=True)))
    else:
        import pyarrow.ipc as ipc

        def decode(values: list[bytes]) -> pa.Table:
            return pa.concat_tables([ipc.open_stream(pa.py_buffer(v)).read_all() for v in values])

    idle = 0
    while True:
        records = consumer.consume(num_messages=5_000, timeout=1.0)
        records = [r for r in records if r.error() is None]
        if not records:
            idle += 1
            if sink.stored + sink.dropped >= args.expect or idle > 30:
                break
            continue
        sink.write(decode([r.value() for r in records]))
        consumer.commit(asynchronous=False)
    consumer.close()


def peak_rss_mib() -> float:
    """This process's peak resident memory since it started (VmHWM: the parent's pages that a
    fork copied before exec do not count, as they would in ``ru_maxrss``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["kafka-python-json", "confluent-orjson", "confluent-msgspec", "confluent-pyarrow"])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--expect", type=int, required=True, help="events sent (duplicates included)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    sink = Sink(args.out)
    if args.kind == "kafka-python-json":
        run_kafka_python(args, sink)
    else:
        run_confluent(args, sink, args.kind)
    print(json.dumps({"stored": sink.stored, "dropped": sink.dropped, "gpu_seconds": sink.gpu_seconds, "peak_rss_mib": peak_rss_mib()}))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
