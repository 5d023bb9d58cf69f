"""A collector restarted inside an interval resumes it: one complete event, nothing lost to dedupe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_agent_loop import PROC, PROJECT_ENTITY, T0, SimTime, published

from collectors.agent import CollectorAgent
from collectors.attribution import ProcAttributor
from collectors.checkpoint import FileCheckpoint
from collectors.fakenvml import installed, scenarios
from collectors.integrate import IntervalIntegrator
from collectors.nvml import NvmlReader
from collectors.spool import SpoolingPublisher
from gpuledger.settings import StaticOwner
from streams.localbus import LocalBus

pytestmark = pytest.mark.unit


def run(tmp_path: Path, scenario, time: SimTime, duration_s: float) -> None:
    attributor = ProcAttributor(PROC, StaticOwner(entity="gov", project="unattributed"), PROJECT_ENTITY)
    publisher = SpoolingPublisher(LocalBus(tmp_path / "bus").producer("gpu.usage.v1"), tmp_path / "spool", 1 << 20,
                                  clock=time.clock)
    reader = NvmlReader(timeout_s=1.0)
    agent = CollectorAgent(
        reader, IntervalIntegrator("dc1", "node-a", 60, 10.0, attributor), publisher, node="node-a",
        sample_period_s=10.0, clock=time.clock, wait=time.wait,
        checkpoint=FileCheckpoint(tmp_path / "spool" / "open-interval.json"),
    )
    with installed(scenario), reader:
        agent.run(duration_s=duration_s)
    publisher.close()


def test_a_restart_inside_an_interval_resumes_it(tmp_path: Path) -> None:
    scenario = scenarios.normal_node("node-a", count=1)
    time = SimTime(T0 - 5)
    scenario.clock = time.clock
    # given a collector that stops after three samples of the 08:00 interval
    run(tmp_path, scenario, time, duration_s=28)
    assert published(tmp_path / "bus") == []  # nothing half-done was sent
    saved = json.loads((tmp_path / "spool" / "open-interval.json").read_text())
    assert saved["open"][0]["samples"] == 3

    # when it starts again inside the same interval and runs past its end
    run(tmp_path, scenario, time, duration_s=40)

    # then the interval is one event with every sample, and the checkpoint is gone
    [first, *_] = published(tmp_path / "bus")
    assert first.interval_start.endswith("08:00:00Z")
    assert first.samples == 6 and first.gpu_seconds == 60.0 and "partial_interval" not in first.flags
    assert not (tmp_path / "spool" / "open-interval.json").exists() or json.loads(
        (tmp_path / "spool" / "open-interval.json").read_text()
    )["open"][0]["start_s"] > first_start(first)


def first_start(event) -> int:
    from streams.schema import parse_timestamp

    return int(parse_timestamp(event.interval_start).timestamp())
