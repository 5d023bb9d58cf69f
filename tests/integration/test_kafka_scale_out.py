"""Scale out: three consumer processes in one group, each on its own working directory, all
writing to one shared store, SIGKILLed at random moments and restarted. Totals stay exact."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kafka_fleet import REPO, kafka_bus, known_fleet, publish, raw_event_ids, stored, stream_consumer, truth


pytestmark = pytest.mark.integration


HERE = Path(__file__).resolve().parent


@pytest.mark.parametrize("where", ["local", pytest.param("s3", marks=pytest.mark.s3)])
def test_three_consumers_killed_at_random_moments_store_every_event_once(
    kafka_bootstrap: str, kafka_topic: str, kafka_group: str, tmp_path: Path, where: str,
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # given a fleet on a 4-partition topic and one shared data directory (a local one, or a
    # bucket on the project's S3 server: three machines would share that)
    fleet = known_fleet(nodes_per_entity=2, hours=3)
    bus = kafka_bus(kafka_bootstrap, partitions=4)
    bus.ensure_topics([kafka_topic])
    publish(bus, kafka_topic, fleet.batches)
    data_dir: Path | str = tmp_path / "shared"
    if where == "s3":
        s3 = request.getfixturevalue("s3")
        data_dir = s3.url(request.getfixturevalue("s3_prefix"), "shared")
        for key, value in s3.environ().items():
            monkeypatch.setenv(key, value)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(HERE)])}
    rng = random.Random(20261201)

    starts = iter(range(1_000))

    def start(member: int, kill_after_s: float) -> subprocess.Popen:
        workdir = tmp_path / f"machine-{member}"  # each member's own local state
        workdir.mkdir(exist_ok=True)
        with open(workdir / f"run-{next(starts)}.log", "w") as log:  # the child keeps its own copy
            return subprocess.Popen(
                [sys.executable, str(HERE / "kafka_chaos_consumer.py"), kafka_bootstrap, str(data_dir),
                 kafka_topic, kafka_group, f"{kill_after_s:.2f}"],
                env=env, cwd=workdir, stdout=log, stderr=subprocess.STDOUT,
            )

    def output(member: int) -> str:
        logs = sorted((tmp_path / f"machine-{member}").glob("run-*.log"), key=lambda p: p.stat().st_mtime)
        return logs[-1].read_text()[-3000:] if logs else ""

    # when three members run and are SIGKILLed at random moments, then restarted, 9 times in all
    members = {m: start(m, rng.uniform(2.0, 8.0)) for m in range(3)}
    kills = 0
    deadline = time.monotonic() + 400
    while kills < 9 and time.monotonic() < deadline:
        for m, proc in list(members.items()):
            if proc.poll() is None:
                continue
            assert proc.returncode in (0, -9), output(m)
            kills += proc.returncode == -9
            members[m] = start(m, rng.uniform(2.0, 8.0) if kills < 9 else 0)
        time.sleep(0.2)
    for proc in members.values():  # the last ones run without a kill timer... or were killed
        try:
            proc.wait(timeout=300)
        except subprocess.TimeoutExpired:
            proc.kill()
    # and one member drains whatever is left
    last = start(9, 0)
    assert last.wait(timeout=300) == 0, output(9)
    # then every event is stored exactly once, and the totals are exact
    assert kills >= 3
    ids = raw_event_ids(data_dir)
    assert len(ids) == len(set(ids)) == len({e.event_id for e in fleet.events})
    assert stored(data_dir) == truth(fleet.events)


def test_a_member_handed_a_partition_resumes_where_storage_is_not_where_kafka_is(
    kafka_bootstrap: str, kafka_topic: str, kafka_group: str, tmp_path: Path
) -> None:
    """Given a member that stored the whole topic but whose offset commits were all lost (a
    rebalance refused them), when another member of the group is handed the partitions, then
    it seeks to the offsets stored with the rows: it re-reads nothing and stores nothing twice."""
    fleet = known_fleet(nodes_per_entity=1, hours=2)
    bus = kafka_bus(kafka_bootstrap, partitions=4)
    bus.ensure_topics([kafka_topic])
    publish(bus, kafka_topic, fleet.batches)
    first, first_parts = stream_consumer(bus, tmp_path, kafka_topic, kafka_group, max_batch_records=50)
    first_parts.kafka_consumer.commit = lambda next_offsets: None  # every commit lost
    done = first.run(until_idle=True, idle_polls=4)
    first_parts.close()
    assert done.accepted == len({e.event_id for e in fleet.events})
    second, second_parts = stream_consumer(bus, tmp_path, kafka_topic, kafka_group, max_batch_records=50)
    again = second.run(until_idle=True, idle_polls=4)
    second_parts.close()
    assert (again.accepted, again.replayed, again.duplicates) == (0, 0, 0)
    ids = raw_event_ids(tmp_path)
    assert len(ids) == len(set(ids)) == len({e.event_id for e in fleet.events})
    assert stored(tmp_path) == truth(fleet.events)
