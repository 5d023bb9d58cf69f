"""A partition stopped because storage's offset is beyond its log (issue 18) shows in the
consumer's metrics (``gpuledger_consumer_partition_stopped{partition}``), in its heartbeat and
in ``gpuledger health`` (unhealthy, with the line that names the re-base), and leaves them once
it is re-based."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from gpuledger.health import HeartbeatFile, assess
from streams.bus import offset_beyond_log
from streams.errors import StoredOffsetBeyondLog
from streams.metrics import ConsumerMetrics

pytestmark = pytest.mark.unit


class Member:
    """The member as the metrics see it: lag, and the partitions it keeps stopped."""

    lag_unit = "records"

    def __init__(self) -> None:
        self.stopped: dict[int, Exception] = {}

    def lag(self) -> Mapping[int, int]:
        return {0: 0, 1: 0}

    def stopped_partitions(self) -> Mapping[int, Exception]:
        return dict(self.stopped)


def test_a_stopped_partition_is_in_the_metrics_the_heartbeat_and_health_until_rebased(tmp_path: Path) -> None:
    member = Member()
    registry = CollectorRegistry()
    clock = [1_000.0]
    metrics = ConsumerMetrics(registry, lag=member, clock=lambda: clock[0])
    line = offset_beyond_log("gpu.usage.v1", 1, 584, 84, "kafka")
    member.stopped[1] = StoredOffsetBeyondLog(line)
    progress = metrics.report()
    assert progress.stopped == {1: line}
    assert registry.get_sample_value("gpuledger_consumer_partition_stopped", {"partition": "1"}) == 1
    assert registry.get_sample_value("gpuledger_consumer_partition_stopped", {"partition": "0"}) is None
    beat = HeartbeatFile(tmp_path / "consumer.heartbeat.json")
    beat.write(progress)
    read = beat.read()
    assert read.stopped == {1: line}
    problems = assess(read, clock[0] + 1, max_stale_s=600)
    assert problems == [f"partition 1 is stopped: {line}"]
    assert "gpuledger offsets rebase --topic gpu.usage.v1 --partition 1" in problems[0]
    # re-based: the member resumes it and everything says so
    member.stopped.clear()
    progress = metrics.report()
    assert progress.stopped is None
    assert registry.get_sample_value("gpuledger_consumer_partition_stopped", {"partition": "1"}) is None
    beat.write(progress)
    assert assess(beat.read(), clock[0] + 1, max_stale_s=600) == []
