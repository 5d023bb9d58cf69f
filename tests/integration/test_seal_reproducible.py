"""The same events through the local bus and through Kafka, in other batch sizes, seal the same
month: byte-identical sealed files, the same content hash and statement numbers (issue 15)."""

from __future__ import annotations

from pathlib import Path

import pytest
from kafka_fleet import PERIOD, kafka_bus, known_fleet, publish, registry, stream_consumer

from accounting.close import close_month
from accounting.figures import statement_number
from storage.dataset import Store
from storage.manifest import read_manifest, verify
from storage.rollup import roll_up
from streams.localbus import LocalBus

pytestmark = pytest.mark.integration


def _drain_and_close(bus, data: Path, topic: str, group: str, max_batch_records: int) -> dict:
    consumer, parts = stream_consumer(bus, data, topic, group, max_batch_records=max_batch_records)
    try:
        consumer.run(until_idle=True, idle_polls=3)
    finally:
        parts.close()
    store = Store(data)
    roll_up(store)
    close_month(store, registry(), PERIOD)
    assert verify(store).ok
    return read_manifest(store, PERIOD)


def test_local_bus_and_kafka_with_other_batch_sizes_seal_the_same_month(
    kafka_bootstrap: str, kafka_topic: str, kafka_group: str, tmp_path: Path
) -> None:
    fleet = known_fleet(nodes_per_entity=1, hours=3, interval_s=60)
    # through Kafka (4 partitions), small batches
    kafka = kafka_bus(kafka_bootstrap, partitions=4)
    publish(kafka, kafka_topic, fleet.batches)
    via_kafka = _drain_and_close(kafka, tmp_path / "kafka", kafka_topic, kafka_group, max_batch_records=37)
    # through the local bus, large batches
    local = LocalBus(tmp_path / "local" / "bus")
    publish(local, "gpu.usage.v1", fleet.batches)
    via_local = _drain_and_close(local, tmp_path / "local", "gpu.usage.v1", "g", max_batch_records=50_000)

    for name, doc in (("kafka", via_kafka), ("local", via_local)):
        print(name, "raw version", doc["reads"]["raw"]["version"], "content_sha256", doc["content_sha256"],
              "manifest_sha256", doc["manifest_sha256"][:16])
    assert via_kafka["content_sha256"] == via_local["content_sha256"]
    assert via_kafka["files"] == via_local["files"]
    assert via_kafka["reads"]["raw"]["version"] != via_local["reads"]["raw"]["version"]
    for entry in via_kafka["files"]:
        assert (tmp_path / "kafka" / entry["path"]).read_bytes() == (tmp_path / "local" / entry["path"]).read_bytes()
    entities = sorted({k.split(".", 1)[1] for k in via_kafka["totals"]} - {"ALL"})
    assert entities
    for entity in entities:
        assert statement_number(PERIOD, entity, via_kafka["content_sha256"]) == statement_number(
            PERIOD, entity, via_local["content_sha256"]
        )
