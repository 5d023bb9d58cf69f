"""``gpuledger collect`` wiring: simulated NVML, spool, local bus, the exit on bad options."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gpuledger.cli import app
from streams.localbus import LocalBus

pytestmark = pytest.mark.unit

REGISTRY = Path(__file__).resolve().parents[2] / "examples" / "registry.toml"


def test_collect_once_on_the_simulated_node_publishes_eight_events(tmp_path):
    result = CliRunner().invoke(
        app,
        ["collect", "--simulate", "--once", "--no-metrics", "--data-dir", str(tmp_path),
         "--registry", str(REGISTRY), "--node", "sim-01", "--site", "dc-test"],
    )
    assert result.exit_code == 0, result.output
    assert "1 rounds, 8 device samples, 8 events published, 0 pending" in result.stdout
    records = LocalBus(tmp_path / "bus").consumer("gpu.usage.v1", "t").poll_batch(100, 0.0)
    assert [r.key for r in records] == [b"sim-01"]
    events = [json.loads(line) for line in records[0].value.decode().splitlines()]
    assert len(events) == 8 and {e["site"] for e in events} == {"dc-test"}
    assert {e["gpu_model"] for e in events} == {"NVIDIA B200"}
    assert all("partial_interval" in e["flags"] for e in events)
    # the simulated node runs no job: its time is unattributed (counted, never billed), not a project's invoice
    assert {(e["entity"], e["project"]) for e in events} == {("gov", "unattributed")}
    # nothing stayed behind in the spool
    assert sum(p.stat().st_size for p in (tmp_path / "spool").glob("seg-*.spool")) == 0


def test_collect_refuses_an_interval_that_does_not_divide_the_hour(tmp_path):
    result = CliRunner().invoke(
        app, ["collect", "--simulate", "--once", "--no-metrics", "--data-dir", str(tmp_path),
              "--registry", str(REGISTRY), "--interval", "7"],
    )
    assert result.exit_code == 1
    assert "must divide 3600" in result.output


def test_collect_without_a_driver_exits_with_what_to_do(tmp_path):
    from collectors.fakenvml import library_absent

    with library_absent():
        result = CliRunner().invoke(
            app, ["collect", "--once", "--no-metrics", "--data-dir", str(tmp_path), "--registry", str(REGISTRY)],
        )
    assert result.exit_code == 1
    assert "libnvidia-ml.so.1" in result.output and "--simulate" in result.output


def test_a_real_collector_without_a_registry_refuses_and_a_simulated_one_uses_the_sample(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GPULEDGER_CONFIG", "")
    monkeypatch.delenv("GPULEDGER_REGISTRY", raising=False)
    from collectors.fakenvml import installed, scenarios

    with installed(scenarios.normal_node("n1")):
        real = CliRunner().invoke(app, ["collect", "--once", "--no-metrics", "--data-dir", str(tmp_path / "a")])
    assert real.exit_code == 1 and "no registry given" in real.output
    simulated = CliRunner().invoke(app, ["collect", "--simulate", "--once", "--no-metrics", "--data-dir", str(tmp_path / "b")])
    assert simulated.exit_code == 0, simulated.output
