"""Re-sends and late events on the real broker into the real S3 server: a collector's spool
replaying intervals stored long ago (older than the dedupe window) adds nothing; an interval
never sent before, older than the window, is stored."""

from __future__ import annotations

from pathlib import Path

import pytest
from kafka_fleet import kafka_bus, known_fleet, publish, raw_event_ids, stored, stream_consumer, truth


pytestmark = [pytest.mark.integration, pytest.mark.s3]


def test_spool_replays_after_the_window_are_dropped_and_a_late_interval_is_kept(
    kafka_bootstrap: str, kafka_topic: str, kafka_group: str, s3, s3_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key, value in s3.environ().items():
        monkeypatch.setenv(key, value)
    data_dir = s3.url(s3_prefix, "data")
    # given five hours of a fleet, the first hour's last intervals held back by one node
    fleet = known_fleet(nodes_per_entity=1, hours=5)
    starts = sorted({e.interval_start for e in fleet.events})
    hour0 = [s for s in starts if s[:13] == starts[0][:13]]
    held_node = fleet.batches[0][0]
    held = [(n, evs) for n, evs in fleet.batches if n == held_node and evs[0].interval_start == hour0[-1]]
    on_time = [(n, evs) for n, evs in fleet.batches if (n, evs) not in held]
    assert held
    bus = kafka_bus(kafka_bootstrap, partitions=4)
    bus.ensure_topics([kafka_topic])
    publish(bus, kafka_topic, on_time)
    consumer, parts = stream_consumer(bus, data_dir, kafka_topic, kafka_group, max_batch_records=40)
    first = consumer.run(until_idle=True, idle_polls=4)
    parts.close()
    # when a spool replays the whole first hour (stored four hours ago, outside the 2-hour
    # window) and the held-back interval of that hour arrives late, to a restarted consumer
    replayed = [(n, evs) for n, evs in on_time if evs[0].interval_start in hour0]
    publish(bus, kafka_topic, replayed + held)
    consumer, parts = stream_consumer(bus, data_dir, kafka_topic, kafka_group, max_batch_records=40)
    second = consumer.run(until_idle=True, idle_polls=4)
    parts.close()
    # then the replay added nothing, the late interval was stored, and the totals are exact
    late_events = sum(len(evs) for _, evs in held)
    assert second.duplicates == sum(len(evs) for _, evs in replayed) > 0
    assert second.accepted == late_events
    ids = raw_event_ids(data_dir)
    assert len(ids) == len(set(ids)) == len({e.event_id for e in fleet.events}) == first.accepted + late_events
    assert stored(data_dir) == truth(fleet.events)
