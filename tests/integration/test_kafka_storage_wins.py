"""Storage's offsets are the truth on Kafka too (issue 18): a lost newest raw commit is read
again, a re-created topic stops the consumer until a deliberate re-base, the group's committed
offsets follow storage after a rebalance (no phantom lag), and a member frozen mid-batch past
the session timeout cannot store a second copy of what the member that took over stored."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kafka import KafkaAdminClient
from kafka.structs import TopicPartition
from kafka_fleet import REGISTRY, REPO, kafka_bus, known_fleet, publish, raw_event_ids, stored, stream_consumer, truth

from storage.dataset import Store
from streams.checkpoint import rebase
from streams.errors import StoredOffsetBeyondLog

pytestmark = pytest.mark.integration


def test_a_lost_newest_raw_commit_is_read_again_not_skipped_by_the_group_offset(
    kafka_bootstrap: str, kafka_topic: str, kafka_group: str, tmp_path: Path
) -> None:
    fleet = known_fleet(nodes_per_entity=1, hours=2)
    bus = kafka_bus(kafka_bootstrap, partitions=4)
    bus.ensure_topics([kafka_topic])
    publish(bus, kafka_topic, fleet.batches)
    first, parts = stream_consumer(bus, tmp_path, kafka_topic, kafka_group, max_batch_records=40)
    first.run(until_idle=True, idle_polls=4)
    parts.close()
    # when raw's newest commit is lost after Kafka's offsets were committed
    newest = sorted((tmp_path / "raw" / "_delta_log").glob("*.json"))[-1]
    newest.unlink()
    assert 0 < len(raw_event_ids(tmp_path)) < len({e.event_id for e in fleet.events})
    # then a restarted member re-reads from storage's offsets and stores what was lost, once
    again, parts = stream_consumer(bus, tmp_path, kafka_topic, kafka_group, max_batch_records=40)
    again.run(until_idle=True, idle_polls=4)
    parts.close()
    ids = raw_event_ids(tmp_path)
    assert len(ids) == len(set(ids)) == len({e.event_id for e in fleet.events})
    assert stored(tmp_path) == truth(fleet.events)


def _admin(bootstrap: str) -> KafkaAdminClient:
    return KafkaAdminClient(bootstrap_servers=[bootstrap], client_id="test-admin")


def test_a_re_created_topic_stops_the_partition_until_a_deliberate_rebase(
    kafka_bootstrap: str, kafka_topic: str, kafka_group: str, tmp_path: Path
) -> None:
    fleet = known_fleet(nodes_per_entity=1, hours=1)
    bus = kafka_bus(kafka_bootstrap, partitions=1)
    bus.ensure_topics([kafka_topic])
    publish(bus, kafka_topic, fleet.batches)
    first, parts = stream_consumer(bus, tmp_path, kafka_topic, kafka_group)
    first.run(until_idle=True, idle_polls=4)
    parts.close()
    before = len(raw_event_ids(tmp_path))
    stream = f"{kafka_group}/{kafka_topic}/0"
    stored_offset = Store(tmp_path).txn_version("raw", stream)
    assert stored_offset is not None and stored_offset > 5
    # when the topic is deleted and re-created, and a few new messages arrive (offsets from 0)
    admin = _admin(kafka_bootstrap)
    try:
        admin.delete_topics([kafka_topic])
        deadline = time.monotonic() + 60
        while kafka_topic in admin.list_topics() and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        admin.close()
    later = known_fleet(nodes_per_entity=1, hours=2).batches[len(fleet.batches):][:3]
    fresh_bus = kafka_bus(kafka_bootstrap, partitions=1)
    for attempt in range(20):  # the broker may still be finishing the deletion
        try:
            fresh_bus.ensure_topics([kafka_topic])
            break
        except Exception:  # noqa: BLE001
            time.sleep(1)
    publish(fresh_bus, kafka_topic, later)
    # then the consumer stops with one line naming the partition, both offsets and the command
    member, parts = stream_consumer(fresh_bus, tmp_path, kafka_topic, kafka_group)
    with pytest.raises(StoredOffsetBeyondLog) as stopped:
        member.run(until_idle=True, idle_polls=4)
    parts.close()
    text = str(stopped.value)
    assert f"partition 0 of {kafka_topic}: storage holds it up to offset {stored_offset}, but the kafka bus's log ends at offset 3" in text
    assert f"gpuledger offsets rebase --topic {kafka_topic} --partition 0" in text
    assert len(raw_event_ids(tmp_path)) == before  # nothing dropped as "replayed", nothing stored
    # and after the operator's re-base the new messages are stored
    rebase(Store(tmp_path), stream, 0, operator="test", reason="topic re-created")
    member, parts = stream_consumer(fresh_bus, tmp_path, kafka_topic, kafka_group)
    member.run(until_idle=True, idle_polls=4)
    parts.close()
    ids = raw_event_ids(tmp_path)
    assert len(ids) == len(set(ids)) == before + sum(len(events) for _, events in later)


def test_after_a_rebalance_the_group_s_committed_offsets_are_storage_s_no_phantom_lag(
    kafka_bootstrap: str, kafka_topic: str, kafka_group: str, tmp_path: Path
) -> None:
    """A member stored the whole topic but its Kafka commits were refused (a rebalance); the
    member handed the partitions stores nothing new, yet commits storage's offsets to the group,
    so Kafka's own lag (committed vs. log end, read with the admin client) is zero."""
    fleet = known_fleet(nodes_per_entity=1, hours=1)
    bus = kafka_bus(kafka_bootstrap, partitions=4)
    bus.ensure_topics([kafka_topic])
    publish(bus, kafka_topic, fleet.batches)
    first, first_parts = stream_consumer(bus, tmp_path, kafka_topic, kafka_group, max_batch_records=50)
    first_parts.kafka_consumer.commit = lambda next_offsets: False  # every commit refused
    first.run(until_idle=True, idle_polls=4)
    first_parts.close()
    second, second_parts = stream_consumer(bus, tmp_path, kafka_topic, kafka_group, max_batch_records=50)
    again = second.run(until_idle=True, idle_polls=4)
    assert (again.accepted, again.replayed) == (0, 0)
    admin = _admin(kafka_bootstrap)
    try:
        committed = admin.list_group_offsets({kafka_group: None})[kafka_group]
    finally:
        admin.close()
        ends = second_parts.kafka_consumer._consumer.end_offsets([TopicPartition(kafka_topic, p) for p in range(4)])
        second_parts.close()
    lag = {tp.partition: ends[tp] - committed[tp].offset for tp in ends if tp in committed}
    assert sorted(lag) == [0, 1, 2, 3] and set(lag.values()) == {0}, (committed, ends)


# -- a member frozen mid-batch (SIGSTOP) past the session timeout, many times --------------

SESSION_TIMEOUT_MS = 6_000  # the broker's group.min.session.timeout.ms
BUSY_TICKS = 10  # CPU (1/100 s) a member spends on a chunk before it is frozen: past its poll, in its decode
START_S = 1_793_577_600  # 2026-11-02T00:00:00Z


def _fleet_message(node: int, first_minute: int, minutes: int) -> tuple[str, bytes]:
    """One node's ``minutes`` one-minute intervals of its 8 GPUs as one message (a collector's
    spool sends several intervals at once), events valid against the sample registry."""
    from datetime import UTC, datetime

    from streams.schema import UsageEvent, make_event_id

    owners = [("gov", "snu-llm", "NVIDIA B200"), ("samsung", "samsung-foundry-ai", "NVIDIA B200"),
              ("skt", "skt-ax", "NVIDIA B200"), ("naver", "naver-hyperclova", "NVIDIA B200")]
    entity, project, model = owners[node % len(owners)]
    name = f"node-{node:04d}"
    lines = []
    for minute in range(first_minute, first_minute + minutes):
        start = datetime.fromtimestamp(START_S + 60 * minute, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        end = datetime.fromtimestamp(START_S + 60 * minute + 60, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        for g in range(8):
            gpu = f"GPU-{node:08d}-0000-0000-0000-{g:012d}"
            lines.append(UsageEvent(
                event_id=make_event_id(name, gpu, start), site="frozen", node=name, gpu_uuid=gpu, device_uuid=gpu,
                gpu_model=model, mig_profile=None, gpu_fraction=1.0, entity=entity, project=project,
                job_id=f"slurm:{node}", interval_start=start, interval_end=end, gpu_seconds=60.0,
                busy_gpu_seconds=30.0, energy_joules=1000.0, samples=6, expected_samples=6,
            ).to_json())
    return name, "\n".join(lines).encode()


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _member_env(bootstrap: str, topic: str, group: str) -> dict[str, str]:
    return {
        **os.environ, "PYTHONPATH": str(REPO), "GPULEDGER_CONFIG": "",
        "GPULEDGER_KAFKA_BOOTSTRAP": bootstrap,
        "GPULEDGER_KAFKA__USAGE_TOPIC": topic,
        "GPULEDGER_KAFKA__QUARANTINE_TOPIC": topic + ".quarantine",
        "GPULEDGER_KAFKA__CONSUMER_GROUP": group,
        "GPULEDGER_KAFKA__SESSION_TIMEOUT_MS": str(SESSION_TIMEOUT_MS),
    }


def test_a_member_frozen_mid_batch_past_the_session_timeout_stores_nothing_twice(
    kafka_bootstrap: str, kafka_topic: str, kafka_group: str, tmp_path: Path
) -> None:
    """Two `gpuledger consume --bus kafka` members of one group. Each cycle publishes a chunk
    (with late events: hour 00 again when the stream is hours past it, outside the dedupe
    window, so their lookups read raw's log mid-batch), waits until one member is busy with
    it, freezes that member (SIGSTOP) past the session timeout while the other takes over its
    partitions and stores them, then thaws it (SIGCONT), whose batch must not be stored again."""
    bus = kafka_bus(kafka_bootstrap, partitions=4)
    bus.ensure_topics([kafka_topic])
    producer = bus.producer(kafka_topic)
    data = tmp_path / "shared"
    env = _member_env(kafka_bootstrap, kafka_topic, kafka_group)
    logs = [tmp_path / f"member-{i}.log" for i in range(2)]
    members = []
    for log_path in logs:
        with open(log_path, "w") as log:
            members.append(subprocess.Popen(
                [sys.executable, "-m", "gpuledger", "consume", "--bus", "kafka", "--data-dir", str(data),
                 "--registry", str(REGISTRY)],
                env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
            ))
    published: list[bytes] = []

    def send(messages: list[tuple[str, bytes]]) -> None:
        for key, value in messages:
            producer.send(key, value)
            published.append(value)
        producer.flush()

    cycles, nodes = 6, 48
    frozen_mid_batch = 0
    try:
        send([_fleet_message(n, 0, 10) for n in range(nodes)])  # hour 00 stored first
        time.sleep(8)  # both members joined and stored it
        for cycle in range(cycles):
            frozen = members[cycle % 2]
            hour = 3 + cycle  # the stream moves on, hours past 00
            chunk = [_fleet_message(n, 60 * hour, 60) for n in range(nodes)]  # ~23,000 events
            late = [_fleet_message(n, 10 + cycle, 1) for n in range(0, nodes, 3)]  # hour 00, new intervals
            before = _cpu_ticks(frozen.pid)
            send(chunk[: len(chunk) // 2] + late + chunk[len(chunk) // 2:])
            # when the member is busy with its batch (it spent CPU on it), it freezes mid-batch
            deadline = time.monotonic() + 3
            while _cpu_ticks(frozen.pid) - before < BUSY_TICKS and time.monotonic() < deadline:
                time.sleep(0.005)
            frozen.send_signal(signal.SIGSTOP)
            frozen_mid_batch += _cpu_ticks(frozen.pid) - before >= BUSY_TICKS
            # and stays frozen past the session timeout while the other member takes over its
            # partitions and stores past its batch; then it is thawed
            time.sleep(SESSION_TIMEOUT_MS / 1000 + 4)
            frozen.send_signal(signal.SIGCONT)
            time.sleep(3)
        for proc, log_path in zip(members, logs, strict=True):
            assert proc.poll() is None, log_path.read_text()[-3000:]
    finally:
        producer.close()
        for proc in members:
            proc.send_signal(signal.SIGCONT)
            proc.terminate()
        for proc in members:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
    # and one member drains what is left
    drain = subprocess.run(
        [sys.executable, "-m", "gpuledger", "consume", "--bus", "kafka", "--until-idle", "--data-dir", str(data),
         "--registry", str(REGISTRY)],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
    )
    assert drain.returncode == 0, drain.stderr[-3000:]
    # then raw holds every distinct event exactly once
    text = "".join(p.read_text() for p in logs)
    print(f"cycles frozen after the batch began: {frozen_mid_batch} of {cycles}; "
          f"commit conflicts seen by thawed members: {text.count('commit conflict')}")
    distinct = {json.loads(line)["event_id"] for value in published for line in value.splitlines()}
    ids = raw_event_ids(data)
    assert len(ids) - len(set(ids)) == 0, f"{len(ids) - len(set(ids))} events stored twice"
    assert len(ids) == len(distinct)
    assert frozen_mid_batch >= cycles // 2  # the freezes did land in batches
