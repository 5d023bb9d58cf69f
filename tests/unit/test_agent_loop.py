"""The collector agent in simulated time: fake NVML underneath pynvml -> NvmlReader ->
ProcAttributor (fixture /proc) -> IntervalIntegrator -> SpoolingPublisher -> local bus."""

from __future__ import annotations

import json
import logging
import os
import signal
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from collectors.agent import CollectorAgent, JsonLogFormatter
from collectors.attribution import ProcAttributor
from collectors.errors import SpoolFull
from collectors.fakenvml import installed, scenarios
from collectors.integrate import IntervalIntegrator
from collectors.metrics import CollectorMetrics
from collectors.nvml import NvmlReader
from collectors.spool import SpoolingPublisher
from gpuledger.cli_collect import _stop_on_signals
from gpuledger.settings import StaticOwner
from streams.localbus import LocalBus
from streams.schema import UsageEvent

pytestmark = pytest.mark.unit

PROC = Path(__file__).resolve().parents[1] / "fixtures" / "proc"
T0 = 1_800_000_000  # a multiple of 60
PROJECT_ENTITY = {"snu-llm": "gov", "kaist-vision": "gov", "naver-hyperclova": "naver"}


class SimTime:
    """Wall clock that moves only when the agent waits."""

    def __init__(self, start: float):
        self.now = start
        self.waits = 0
        self.on_wait = None

    def clock(self) -> float:
        return self.now

    def wait(self, seconds: float) -> None:
        self.waits += 1
        self.now += seconds
        if self.on_wait is not None:
            self.on_wait(self)


def published(bus_dir: Path) -> list[UsageEvent]:
    consumer = LocalBus(bus_dir).consumer("gpu.usage.v1", "test")
    events = []
    for record in consumer.poll_batch(10_000, 0.0):
        events.extend(UsageEvent.from_dict(json.loads(line)) for line in record.value.decode().splitlines())
    return events


@pytest.fixture
def rig(tmp_path):
    """Everything real except the GPU (the fake NVML) and the clock (simulated)."""

    def build(scenario, **agent_kwargs):
        time = SimTime(T0 - 5)
        scenario.clock = time.clock
        attributor = ProcAttributor(
            PROC, StaticOwner(entity="gov", project="unattributed"), PROJECT_ENTITY,
            namespace_projects={"hyperclova-train": "naver-hyperclova"},
        )
        integrator = IntervalIntegrator("dc1", "node-a", 60, 10.0, attributor)
        publisher = SpoolingPublisher(
            LocalBus(tmp_path / "bus").producer("gpu.usage.v1"), tmp_path / "spool", 1 << 20, clock=time.clock
        )
        registry = CollectorRegistry()
        reader = NvmlReader(timeout_s=1.0)
        agent = CollectorAgent(
            reader, integrator, publisher, node="node-a", sample_period_s=10.0, clock=time.clock,
            wait=time.wait, metrics=CollectorMetrics(registry),
            spool_depth=lambda: (publisher.backlog_bytes, publisher.backlog_messages), **agent_kwargs,
        )
        return agent, reader, time, registry, publisher

    return build


def test_three_intervals_of_a_normal_node_end_up_on_the_bus(rig, tmp_path):
    scenario = scenarios.normal_node("node-a")
    agent, reader, time, registry, publisher = rig(scenario)
    with installed(scenario), reader:
        stats = agent.run(duration_s=185)
    publisher.close()
    events = published(tmp_path / "bus")
    assert stats.rounds == 19  # ticks T0, T0+10, …, T0+180
    assert len(events) == 4 * 8 and len({e.event_id for e in events}) == 32
    full = [e for e in events if e.interval_start != "2027-01-15T08:03:00Z"]
    assert all(e.samples == e.expected_samples == 6 and e.gpu_seconds == 60.0 for e in full)
    assert all("partial_interval" not in e.flags for e in full)
    middle = [e for e in events if e.interval_start == "2027-01-15T08:01:00Z"]
    # the fake's counters follow the simulated clock: 60 s at 300 W + 10 W per GPU index
    power_w = {g.uuid: g.power_milliwatts / 1000 for g in scenario.gpus}
    assert sorted(e.gpu_uuid for e in middle) == sorted(power_w)
    assert all(e.energy_joules == pytest.approx(power_w[e.gpu_uuid] * 60) for e in middle)
    last = [e for e in events if e.interval_start == "2027-01-15T08:03:00Z"]
    assert len(last) == 8 and all("partial_interval" in e.flags and e.samples == 1 for e in last)
    assert registry.get_sample_value("gpuledger_collector_samples_total") == 19 * 8
    assert registry.get_sample_value("gpuledger_collector_events_published_total") == 32
    assert registry.get_sample_value("gpuledger_collector_spool_messages") == 0


def test_sigterm_publishes_the_open_interval_and_stops(rig, tmp_path):
    scenario = scenarios.normal_node("node-a", count=2)
    agent, reader, time, registry, publisher = rig(scenario)

    def terminate_on_ninth_wait(t: SimTime) -> None:
        if t.waits == 9:
            os.kill(os.getpid(), signal.SIGTERM)

    time.on_wait = terminate_on_ninth_wait
    with installed(scenario), reader, _stop_on_signals(agent):
        stats = agent.run()
    publisher.close()
    assert agent.stopping and stats.rounds == 8  # the wait the signal cut short took no sample
    events = published(tmp_path / "bus")
    open_interval = [e for e in events if e.interval_start == "2027-01-15T08:01:00Z"]
    assert [(e.samples, "partial_interval" in e.flags) for e in open_interval] == [(2, True), (2, True)]
    assert len(events) == 4


def test_lost_gpu_and_jobs_show_in_events_and_metrics(rig, tmp_path):
    scenario = scenarios.jobs_node("node-a")
    agent, reader, time, registry, publisher = rig(scenario)

    def lose_gpu_1(t: SimTime) -> None:
        scenario.gpus[1].lost = t.now >= T0 + 30

    time.on_wait = lose_gpu_1
    with installed(scenario), reader:
        agent.run(duration_s=55)
    publisher.close()
    events = {e.gpu_uuid: e for e in published(tmp_path / "bus")}
    gpus = scenario.gpus
    assert (events[gpus[0].uuid].project, events[gpus[0].uuid].job_id) == ("snu-llm", "slurm:1001")
    assert events[gpus[1].uuid].samples == 3 and "gpu_lost" in events[gpus[1].uuid].flags
    assert events[gpus[2].uuid].project == "naver-hyperclova"
    assert "shared_gpu" in events[gpus[3].uuid].flags
    assert registry.get_sample_value("gpuledger_collector_nvml_errors_total", {"kind": "gpu_lost"}) == 3
    assert registry.get_sample_value("gpuledger_collector_nvml_errors_total", {"kind": "nvml_error"}) == 0


class RefusingOnce:
    """A Publisher twin whose spool is full for the first batch."""

    def __init__(self) -> None:
        self.batches: list[list[UsageEvent]] = []
        self.refuse = 1

    def publish(self, node: str, events) -> None:
        if self.refuse:
            self.refuse -= 1
            raise SpoolFull("spool full")
        self.batches.append(list(events))

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_a_refused_batch_is_kept_and_sent_with_the_next():
    scenario = scenarios.normal_node("node-a", count=2)
    time = SimTime(T0 - 5)
    publisher = RefusingOnce()
    registry = CollectorRegistry()
    integrator = IntervalIntegrator("dc1", "node-a", 60, 10.0, ProcAttributor(PROC, None, {}))
    reader = NvmlReader()
    agent = CollectorAgent(reader, integrator, publisher, node="node-a", clock=time.clock, wait=time.wait,
                           metrics=CollectorMetrics(registry))
    with installed(scenario), reader:
        stats = agent.run(duration_s=125)
    # refused at the end of 08:00, offered again at the next round, then business as usual
    assert [[e.interval_start[-9:] for e in b] for b in publisher.batches] == [
        ["08:00:00Z"] * 2, ["08:01:00Z"] * 2, ["08:02:00Z"] * 2
    ]
    assert stats.events_published == 6 and stats.events_pending == 0 and stats.events_dropped == 0
    assert registry.get_sample_value("gpuledger_collector_publish_failures_total") == 1


def test_once_samples_immediately_and_flushes(rig, tmp_path):
    scenario = scenarios.normal_node("node-a", count=1)
    agent, reader, time, registry, publisher = rig(scenario)
    with installed(scenario), reader:
        stats = agent.run(max_rounds=1)
    publisher.close()
    (event,) = published(tmp_path / "bus")
    assert stats.rounds == 1 and time.waits == 0
    assert event.samples == 1 and "partial_interval" in event.flags


def test_json_log_lines_carry_the_extra_fields():
    record = logging.LogRecord("gpuledger.collector", logging.WARNING, __file__, 1, "nvml error", None, None)
    record.gpu_uuid = "GPU-1"
    line = json.loads(JsonLogFormatter().format(record))
    assert (line["level"], line["logger"], line["msg"], line["gpu_uuid"]) == (
        "warning", "gpuledger.collector", "nvml error", "GPU-1"
    )
    assert line["ts"].endswith("Z")


def test_mig_node_events_carry_fractions_and_apportioned_energy(rig, tmp_path):
    scenario = scenarios.mig_node("node-a")
    agent, reader, time, registry, publisher = rig(scenario)
    with installed(scenario), reader:
        agent.run(duration_s=125)
    publisher.close()
    middle = [e for e in published(tmp_path / "bus") if e.interval_start == "2027-01-15T08:01:00Z"]
    h100 = scenario.gpus[0]
    on_h100 = [e for e in middle if e.gpu_uuid == h100.uuid]
    assert sorted(e.mig_profile for e in on_h100) == ["1g.10gb", "1g.10gb", "2g.20gb", "3g.40gb"]
    # invariant 2: the instances of one GPU sum to at most the interval
    assert sum(e.gpu_seconds for e in on_h100) == pytest.approx(60.0)
    # energy is the GPU's counter delta apportioned by fraction, never summed per instance
    assert sum(e.energy_joules for e in on_h100) == pytest.approx(h100.power_milliwatts / 1000 * 60)
    assert all("utilisation_fallback" in e.flags for e in on_h100)
    assert {e.gpu_fraction for e in middle if e.gpu_uuid == scenario.gpus[1].uuid} == {0.5, 0.25}


def test_driver_reload_is_a_flagged_reset_not_negative_energy(rig, tmp_path):
    scenario = scenarios.energy_reset_node("node-a")
    agent, reader, time, registry, publisher = rig(scenario)

    def reload_driver(t: SimTime) -> None:
        if t.waits == 9:  # during 08:01
            scenario.reset_energy(1)

    time.on_wait = reload_driver
    with installed(scenario), reader:
        agent.run(duration_s=125)
    publisher.close()
    events = [e for e in published(tmp_path / "bus") if e.interval_start == "2027-01-15T08:01:00Z"]
    reset = next(e for e in events if e.gpu_uuid == scenario.gpus[1].uuid)
    steady = next(e for e in events if e.gpu_uuid == scenario.gpus[0].uuid)
    assert "counter_reset" in reset.flags and 0 <= reset.energy_joules < 310 * 60
    assert "counter_reset" not in steady.flags and steady.energy_joules == pytest.approx(300 * 60)


def test_a_hung_gpu_does_not_stop_the_node(rig, tmp_path):
    scenario = scenarios.hung_call_node("node-a")
    agent, reader, time, registry, publisher = rig(scenario)
    with installed(scenario), reader:
        stats = agent.run(duration_s=55)
    publisher.close()
    events = {e.gpu_uuid: e for e in published(tmp_path / "bus")}
    assert stats.rounds == 6 and len(events) == 4
    assert "nvml_error" in events[scenario.gpus[1].uuid].flags
    assert all("nvml_error" not in events[g.uuid].flags for i, g in enumerate(scenario.gpus) if i != 1)
    assert registry.get_sample_value("gpuledger_collector_nvml_errors_total", {"kind": "nvml_error"}) == 6
