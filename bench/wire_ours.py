"""gpuledger's consumer for ``bench/bench_wire.py``: one ``StreamConsumer`` (kafka-python bus,
strict decode, rules, event-id check, dedupe window, Delta commit of raw + quarantine,
offsets) draining a topic into a fresh data directory. Prints one JSON line of its totals.

    .venv/bin/python bench/wire_ours.py --bootstrap HOST:PORT --topic T --group G --data-dir DIR [--max-batch-records N] [--max-batch-bytes B]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def peak_rss_mib() -> float:
    """This process's peak resident memory since it started (VmHWM: the parent's pages that a
    fork copied before exec do not count, as they would in ``ru_maxrss``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--max-batch-records", type=int, default=50_000)
    parser.add_argument("--max-batch-bytes", type=int, default=None, help="default: the settings' default")
    args = parser.parse_args()
    from accounting.registry import load_registry
    from gpuledger.settings import KafkaSettings
    from gpuledger.wiring import accounts_of
    from storage.dataset import Store
    from streams.consumer import StreamConsumer
    from streams.kafka import KafkaBus
    from streams.pipeline import BatchProcessor

    bound = {} if args.max_batch_bytes is None else {"max_batch_bytes": args.max_batch_bytes}
    bus = KafkaBus(KafkaSettings(bootstrap=args.bootstrap, partitions=args.partitions))
    consumer = bus.consumer(args.topic, args.group, **bound)
    processor = BatchProcessor(Store(args.data_dir), accounts_of(load_registry(REPO / "examples" / "registry.toml")))
    stream = StreamConsumer(consumer, processor, max_batch_records=args.max_batch_records, poll_timeout_s=0.5, **bound)
    totals = stream.run(until_idle=True, idle_polls=3)
    consumer.close()
    print(json.dumps({"stored": totals.accepted, "dropped": totals.duplicates, "refused": totals.refused, "batches": totals.batches,
                      "peak_rss_mib": peak_rss_mib()}))


if __name__ == "__main__":
    main()
