"""A Kafka stream consumer that SIGKILLs itself after its first batch is written, before the
offset commit: the worst moment to die. Run as a process by test_kafka_faults.py.

usage: python kafka_killed_consumer.py BOOTSTRAP DATA_DIR TOPIC GROUP MAX_BATCH_RECORDS
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from kafka_fleet import kafka_bus, stream_consumer


def main() -> int:
    bootstrap, data_dir, topic, group, max_batch = sys.argv[1:6]
    consumer, _parts = stream_consumer(
        kafka_bus(bootstrap), Path(data_dir), topic, group, max_batch_records=int(max_batch),
        # StreamConsumer's hook between the Parquet write and the commit: die there, hard.
        before_commit=lambda _result: os.kill(os.getpid(), signal.SIGKILL),
    )
    consumer.run(until_idle=True, idle_polls=3)
    return 3  # not reached when there was anything to consume


if __name__ == "__main__":
    sys.exit(main())
