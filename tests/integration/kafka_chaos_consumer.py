"""A Kafka stream consumer that SIGKILLs itself after a random delay, as a machine might die.

Run as a process by test_kafka_scale_out.py: each process has its own working directory (as on
its own machine) and writes to the shared data directory.

usage: python kafka_chaos_consumer.py BOOTSTRAP DATA_DIR TOPIC GROUP KILL_AFTER_S
(KILL_AFTER_S = 0: never killed; runs until idle)
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

from kafka_fleet import kafka_bus, stream_consumer


def main() -> int:
    bootstrap, data_dir, topic, group, kill_after_s = sys.argv[1:6]
    if float(kill_after_s) > 0:
        threading.Timer(float(kill_after_s), lambda: os.kill(os.getpid(), signal.SIGKILL)).start()
    consumer, parts = stream_consumer(kafka_bus(bootstrap), data_dir if data_dir.startswith("s3:") else Path(data_dir), topic, group, max_batch_records=37)
    try:
        totals = consumer.run(until_idle=True, idle_polls=4)
    finally:
        parts.close()
    print(f"accepted={totals.accepted} replayed={totals.replayed} duplicates={totals.duplicates}")
    os._exit(0)  # the kill timer thread must not keep the process alive


if __name__ == "__main__":
    sys.exit(main())
