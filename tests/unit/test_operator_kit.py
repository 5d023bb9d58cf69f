"""The operator kit and the settings traps: what an operator installs must be right as shipped.

Alert rules and the dashboard name only metrics the collector exports; systemd units pass
``systemd-analyze verify``; the container's entrypoint runs the collector by default; settings
refuse a missing config file and misspelt keys; the collector warns on the local bus; no help
screen shows ``<bool>`` beside a flag.
"""

from __future__ import annotations

import configparser
import json
import logging
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry
from typer.testing import CliRunner

from collectors.metrics import CollectorMetrics
from gpuledger.cli import app
from gpuledger.cli_collect import log_bus
from gpuledger.settings import SettingsError, load_settings, packaged_example
from tests.unit.test_docs import commands

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
# Metrics that come from Prometheus itself or node_exporter, not from gpuledger.
FOREIGN_METRICS = {"up", "node_timex_sync_status", "node_timex_offset_seconds"}
PROMQL_WORDS = {
    "rate", "increase", "delta", "sum", "max", "min", "count", "by", "abs", "time", "vector", "or", "and",
    "histogram_quantile", "le", "instance", "job", "kind", "changes", "deriv", "outcome", "partition",
    "without", "on", "year", "month", "day_of_month", "job_id",
}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in list(os.environ):
        if name.startswith("GPULEDGER_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("GPULEDGER_CONFIG", "")


def exported_metrics() -> set[str]:
    from accounting.scheduler_metrics import SchedulerMetrics
    from storage.dataset import Store
    from streams.metrics import ConsumerMetrics

    registry = CollectorRegistry()
    CollectorMetrics(registry)
    ConsumerMetrics(registry)
    SchedulerMetrics(registry, Store(Path("/nonexistent-data-dir")))
    families = list(registry.collect())
    # a labelled gauge (lag per partition) or counter (runs per job) has no sample until a label
    # value reports: its family counts
    return {sample.name for family in families for sample in family.samples} | {
        family.name for family in families if family.type == "gauge"
    } | {f"{family.name}_total" for family in families if family.type == "counter"}


def metric_names(expr: str) -> set[str]:
    """Identifiers of a PromQL expression that are metric names (label matchers stripped)."""
    bare = re.sub(r"\{[^}]*\}", "", expr)
    bare = re.sub(r"\[[^\]]*\]", "", bare)
    bare = re.sub(r'"[^"]*"', "", bare)
    return {word for word in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", bare) if word not in PROMQL_WORDS}


def balanced(expr: str) -> bool:
    depth = {"(": 0, "[": 0, "{": 0}
    pairs = {")": "(", "]": "[", "}": "{"}
    for char in expr:
        if char in depth:
            depth[char] += 1
        elif char in pairs:
            depth[pairs[char]] -= 1
            if depth[pairs[char]] < 0:
                return False
    return not any(depth.values())


# -- Prometheus and Grafana -------------------------------------------------------------------
def test_alert_rules_parse_and_name_only_real_metrics() -> None:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "gpuledger-alerts.yml").read_text())
    known = exported_metrics() | FOREIGN_METRICS
    alerts = [rule for group in rules["groups"] for rule in group["rules"]]
    assert len(alerts) >= 8
    assert len({a["alert"] for a in alerts}) == len(alerts)
    for alert in alerts:
        assert set(alert) <= {"alert", "expr", "for", "labels", "annotations"}, alert["alert"]
        assert alert["labels"]["severity"] in {"critical", "warning", "info"}, alert["alert"]
        assert alert["annotations"]["summary"] and alert["annotations"]["description"], alert["alert"]
        assert balanced(alert["expr"]), alert["alert"]
        unknown = metric_names(alert["expr"]) - known
        assert not unknown, f"{alert['alert']} names metrics nobody exports: {unknown}"
        if "for" in alert:
            assert re.fullmatch(r"\d+[smh]", alert["for"]), alert["alert"]


@pytest.mark.parametrize("name", ["gpuledger-collectors", "gpuledger-consumers"])
def test_the_grafana_dashboard_is_valid_and_names_only_real_metrics(name: str) -> None:
    dashboard = json.loads((DEPLOY / "grafana" / f"{name}.json").read_text())
    known = exported_metrics() | FOREIGN_METRICS
    panels = dashboard["panels"]
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 30
    assert len({p["id"] for p in panels}) == len(panels)
    cells = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        mine = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        cells |= mine
        for target in panel["targets"]:
            assert balanced(target["expr"]), panel["title"]
            unknown = metric_names(target["expr"].replace("$instance", "")) - known
            assert not unknown, f"{panel['title']}: {unknown}"
    used = {name for p in panels for t in p["targets"] for name in metric_names(t["expr"])}
    # every metric an operator watches is on its dashboard
    watched = {
        "gpuledger-collectors": ("collector", ("samples_total", "spool_bytes", "publish_lag_seconds", "nvml_errors_total", "events_dropped_total")),
        "gpuledger-consumers": ("consumer", ("events_total", "lag_records", "batch_duration_seconds_bucket", "last_progress_timestamp_seconds", "commit_failures_total")),
    }
    room, families = watched[name]
    for family in families:
        assert f"gpuledger_{room}_{family}" in used, family


# -- systemd ----------------------------------------------------------------------------------
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))


def test_there_are_units_for_the_collector_the_consumer_and_the_scheduler() -> None:
    assert {u.stem for u in UNITS} >= {"gpuledger-collector", "gpuledger-consumer", "gpuledger-scheduler"}


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.stem)
def test_a_unit_runs_a_command_the_cli_has(unit: Path) -> None:
    parsed = configparser.ConfigParser(strict=False, interpolation=None)
    parsed.read_string(unit.read_text())
    service = parsed["Service"]
    assert service["User"] == "gpuledger"
    assert service["Environment"] == "GPULEDGER_CONFIG=/etc/gpuledger/gpuledger.toml"
    argv = service["ExecStart"].replace("\\\n", " ").split()
    if argv[1:3] == ["-m", "gpuledger.cli_collect"]:
        command = "collect"
    else:
        assert argv[0].endswith("/gpuledger"), argv
        command = argv[1]
    assert (command,) in commands()
    assert "time-sync.target" in parsed["Unit"].get("After", "") or unit.stem == "gpuledger-consumer"


def test_the_units_pass_systemd_analyze_verify() -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        if os.environ.get("GPULEDGER_CI"):
            pytest.fail("systemd-analyze is missing: CI checks the units with it")
        pytest.skip("systemd-analyze is not installed")
    done = subprocess.run([analyze, "verify", *map(str, UNITS)], capture_output=True, text=True, check=False)
    # the install paths (/opt/gpuledger/venv) do not exist here; anything else is a real mistake
    complaints = [
        line for line in (done.stdout + done.stderr).splitlines()
        if line.strip() and not re.search(r"Command /opt/gpuledger/venv/bin/\S+ is not executable", line)
    ]
    assert not complaints, complaints


# -- the container ----------------------------------------------------------------------------
def test_the_image_entrypoint_runs_the_collector_unless_told_otherwise(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("python", "gpuledger"):
        fake = bin_dir / name
        fake.write_text(f'#!/bin/sh\necho "{name} $*"\n')
        fake.chmod(0o755)
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin", "GPULEDGER_DATA_DIR": str(tmp_path / "data"),
        "GPULEDGER_REGISTRY": str(REPO / "examples" / "registry.toml"), "GPULEDGER_COLLECTOR__NODE": "n1",
    }

    def entry(*args: str) -> str:
        done = subprocess.run(["sh", str(DEPLOY / "docker" / "entrypoint.sh"), *args], env=env,
                              capture_output=True, text=True, check=True)
        return done.stdout.strip()

    assert entry() == "python -m gpuledger.cli_collect"
    assert entry("--simulate") == "python -m gpuledger.cli_collect --simulate"
    assert entry("collect", "--bus", "kafka") == "python -m gpuledger.cli_collect --bus kafka"
    assert entry("consume", "--bus", "kafka") == "gpuledger consume --bus kafka"
    assert entry("schedule") == "gpuledger schedule"
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "CMD" not in dockerfile.split("ENTRYPOINT", 1)[1], "a CMD would replace the collector default"


# -- settings ---------------------------------------------------------------------------------
def test_a_named_config_file_must_exist(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GPULEDGER_CONFIG", str(tmp_path / "gpuledger.tmol"))
    with pytest.raises(SettingsError, match="gpuledger.tmol, which does not exist"):
        load_settings()


def test_an_unreadable_config_file_is_named(monkeypatch, tmp_path: Path) -> None:
    config = tmp_path / "gpuledger.toml"
    config.write_text("[collector\ninterval_s = 30\n")
    monkeypatch.setenv("GPULEDGER_CONFIG", str(config))
    with pytest.raises(SettingsError, match="not readable TOML"):
        load_settings()


def test_misspelt_keys_in_every_section_are_named_together(monkeypatch, tmp_path: Path) -> None:
    config = tmp_path / "gpuledger.toml"
    config.write_text(
        'bus = "kafka"\n[collector]\nintervall_s = 30\n[collector.static_owner]\nentity = "gov"\nprojct = "x"\n'
        "[kafka]\nbootstrapp = 'k:1'\n[consumer]\nidle_poll = 3\n"
    )
    monkeypatch.setenv("GPULEDGER_CONFIG", str(config))
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    for key in ("collector.intervall_s", "collector.static_owner.projct", "kafka.bootstrapp", "consumer.idle_poll"):
        assert key in message, key


def test_an_empty_config_variable_reads_no_file(monkeypatch, tmp_path: Path) -> None:
    (tmp_path / "gpuledger.toml").write_text('bus = "kafka"\n')
    monkeypatch.chdir(tmp_path)
    assert load_settings().bus == "local"
    monkeypatch.delenv("GPULEDGER_CONFIG")
    assert load_settings().bus == "kafka"  # unset: ./gpuledger.toml


def test_no_registry_given_is_refused_with_how_to_give_one(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings()
    assert settings.registry is None
    with pytest.raises(SettingsError) as caught:
        settings.registry_file()
    assert "--registry" in str(caught.value) and "GPULEDGER_REGISTRY" in str(caught.value)
    # an examples/ path that does not exist here is not quietly swapped for the packaged sample
    assert load_settings(registry=Path("examples/registry.toml")).registry_file() == Path("examples/registry.toml")
    monkeypatch.setenv("GPULEDGER_REGISTRY", "/etc/gpuledger/registry.toml")
    assert load_settings().registry_file() == Path("/etc/gpuledger/registry.toml")


def test_every_example_file_ships_in_the_package() -> None:
    for example in (REPO / "examples").iterdir():
        assert packaged_example(example.name).read_bytes() == example.read_bytes(), example.name


def test_a_collector_on_the_local_bus_warns_that_events_stay_here(tmp_path: Path) -> None:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("gpuledger.collector")
    keep, level = Keep(), logger.level
    logger.addHandler(keep)
    logger.setLevel(logging.INFO)
    try:
        log_bus(load_settings(data_dir=tmp_path, bus="local"), simulate=False)
        log_bus(load_settings(data_dir=tmp_path, bus="kafka"), simulate=False)
    finally:
        logger.removeHandler(keep)
        logger.setLevel(level)
    warning, kafka = records
    assert warning.levelno == logging.WARNING and "events stay on this machine" in warning.getMessage()
    assert warning.__dict__["bus"] == "local"
    assert kafka.levelno == logging.INFO and kafka.__dict__["bus"] == "kafka"
    assert kafka.__dict__["bootstrap"] == "127.0.0.1:9092"


# -- help screens -----------------------------------------------------------------------------
@pytest.mark.parametrize("command", [(), *commands()], ids=lambda c: " ".join(c) or "gpuledger")
def test_no_help_screen_shows_a_value_beside_a_flag(command: tuple[str, ...]) -> None:
    result = CliRunner().invoke(app, [*command, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "<bool>" not in result.output
    assert "--help" in result.output


# -- the demo ---------------------------------------------------------------------------------
def test_a_demo_rerun_keeps_the_reports_and_exports_made_from_it(tmp_path: Path) -> None:
    from gpuledger.demo import DEMO_MARKER, prepare_data_dir

    data = tmp_path / "demo"
    prepare_data_dir(data)
    for name in ("reports/2026-10/report.html", "exports/2026-10/finance/x.csv", "raw/period=2026-10/a.parquet"):
        (data / name).parent.mkdir(parents=True, exist_ok=True)
        (data / name).write_text("made")
    prepare_data_dir(data)
    assert (data / "reports/2026-10/report.html").read_text() == "made"
    assert (data / "exports/2026-10/finance/x.csv").exists()
    assert not (data / "raw").exists()
    assert (data / DEMO_MARKER).exists()


# -- packaging --------------------------------------------------------------------------------
def test_the_slim_install_leaves_out_exactly_the_server_packages() -> None:
    import tomllib

    from gpuledger.cli_common import SERVER_DISTRIBUTIONS, SERVER_MODULES

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]

    def names(requirements: list[str]) -> set[str]:
        return {re.split(r"[\[<>=!~; ]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements}

    server = names(project["optional-dependencies"]["server"])
    assert server == {SERVER_DISTRIBUTIONS.get(m, m).replace("_", "-") for m in SERVER_MODULES}
    assert not server & names(project["dependencies"])
    assert "gpuledger[server]" in project["optional-dependencies"]["test"]


def test_the_licence_is_an_spdx_expression_so_installs_print_no_warnings() -> None:
    import tomllib

    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert pyproject["project"]["license"] == "Apache-2.0"
    assert any(r.replace(" ", "").startswith("setuptools>=77") for r in pyproject["build-system"]["requires"])
