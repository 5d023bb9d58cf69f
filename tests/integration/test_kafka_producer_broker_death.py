"""A producer whose broker dies between sends ends its flush with an error, never hangs.

A guard for issue 12 (``ingest --bus kafka`` waited over 300 s after the broker died): the
flush is bounded by the delivery and connect timeouts. kafka-python's own delivery timeout
also ends this flush, so the test guards the behaviour rather than proving the bound."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from kafka_fleet import REPO, Broker

pytestmark = pytest.mark.integration


def test_a_flush_after_the_broker_died_raises_instead_of_hanging(
    kafka_broker: Broker, kafka_bootstrap: str, kafka_topic: str, tmp_path: Path
) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        from gpuledger.settings import KafkaSettings
        from streams.errors import BusUnavailable
        from streams.kafka import KafkaBus

        bus = KafkaBus(KafkaSettings(bootstrap={kafka_bootstrap!r}), connect_timeout_s=5.0, delivery_timeout_s=20.0)
        producer = bus.producer({kafka_topic!r})
        producer.send("n", b"first")
        producer.flush()
        print("delivered", flush=True)
        sys.stdin.readline()
        try:
            for i in range(200):
                producer.send("n", b"y" * 1000)
            producer.flush()
            print("no error", flush=True)
        except BusUnavailable as exc:
            print("error:", str(exc).splitlines()[0], flush=True)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        # given a producer that delivered to the broker
        assert proc.stdout.readline().strip() == "delivered"
        # when the broker dies and the producer sends and flushes again
        kafka_broker.stop()
        # then the flush ends with an error (the hang guard is generous: 20 s delivery + 5 s)
        out, err = proc.communicate("go\n", timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
        kafka_broker.start()
    assert "error: Kafka unavailable while" in out, out + err
