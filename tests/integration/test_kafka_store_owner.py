"""One store, one owner, on Kafka (issue 18, item 6): two `consume --bus kafka` processes of
different groups on one data dir each received every partition and stored every event (60,000
raw rows for 30,000 ids). Now the second group is refused at start with one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from kafka_fleet import kafka_bus, known_fleet, publish

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
REGISTRY = REPO / "examples" / "registry.toml"


def consume(bootstrap: str, topic: str, group: str, data: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "GPULEDGER_CONFIG": "", "GPULEDGER_KAFKA_BOOTSTRAP": bootstrap,
           "GPULEDGER_KAFKA__USAGE_TOPIC": topic, "GPULEDGER_KAFKA__QUARANTINE_TOPIC": topic + ".quarantine",
           "GPULEDGER_KAFKA__CONSUMER_GROUP": group}
    return subprocess.Popen(
        [sys.executable, "-m", "gpuledger", "consume", "--bus", "kafka", "--until-idle", "--data-dir", str(data),
         "--registry", str(REGISTRY)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def test_two_groups_on_one_store_the_second_is_refused(kafka_bootstrap: str, kafka_topic: str, kafka_group: str,
                                                       tmp_path: Path) -> None:
    fleet = known_fleet(nodes_per_entity=1, hours=2)
    bus = kafka_bus(kafka_bootstrap, partitions=4)
    bus.ensure_topics([kafka_topic])
    publish(bus, kafka_topic, fleet.batches)
    data = tmp_path / "data"
    # when two consumers of different groups start on one data dir at the same time
    procs = {g: consume(kafka_bootstrap, kafka_topic, g, data) for g in (kafka_group + "-a", kafka_group + "-b")}
    done = {}
    for g, p in procs.items():
        out, err = p.communicate(timeout=300)
        done[g] = (p.returncode, out, err)
    # then one stored everything, the other was refused in one line naming store, group, remedy
    assert sorted(code for code, _, _ in done.values()) == [0, 1], done
    refused = next(g for g, (code, _, _) in done.items() if code == 1)
    owner = next(g for g in done if g != refused)
    lines = [ln for ln in done[refused][2].splitlines() if not ln.startswith("{")]
    assert len(lines) == 1 and "Traceback" not in done[refused][2], done[refused][2]
    assert f"is written by consumer group '{owner}' of topic '{kafka_topic}'" in lines[0]
    assert f"gpuledger storage add-group {refused} --reason" in lines[0]
    ids = pl.read_parquet(sorted(data.glob("raw/**/*.parquet")))["event_id"]
    assert ids.len() == ids.n_unique() == len({e.event_id for e in fleet.events})
