"""``gpuledger registry check`` and ``gpuledger close`` through the real typer app."""

from __future__ import annotations

from pathlib import Path

import pytest
from acct_given import SAMPLE_REGISTRY, hours, write_usage
from typer.testing import CliRunner

from gpuledger.cli import app
from storage.dataset import Store

pytestmark = pytest.mark.unit

runner = CliRunner()


def test_registry_check_accepts_the_sample() -> None:
    result = runner.invoke(app, ["registry", "check", str(SAMPLE_REGISTRY)])
    assert result.exit_code == 0, result.output
    assert "5 entities" in result.output


def test_registry_check_lists_every_problem_and_exits_1(tmp_path: Path) -> None:
    bad = tmp_path / "registry.toml"
    bad.write_text(
        SAMPLE_REGISTRY.read_text(encoding="utf-8")
        .replace('rounding = "truncate"', 'rounding = "round-ish"')
        .replace('entity = "skt"\n', 'entity = "sk"\n', 1)
        .replace("count = 12000", "count = -1"),
        encoding="utf-8",
    )
    result = runner.invoke(app, ["registry", "check", str(bad)])
    assert result.exit_code == 1
    text = result.output
    assert str(bad) in text
    assert "billing.rounding: unknown rounding rule 'round-ish'" in text
    assert "projects.skt-ax.entity: unknown entity 'sk'" in text
    assert "negative count -1" in text


def test_close_command_writes_the_ledgers_and_prints_the_summary(tmp_path: Path) -> None:
    store = Store(tmp_path / "data")
    write_usage(store, hours("2026-11-02T00:00", 3, entity="gov", project="snu-llm", gpu_model="NVIDIA B200", gpu_uuid="GPU-1"), "b1")
    args = ["close", "--month", "2026-11", "--data-dir", str(tmp_path / "data"), "--registry", str(SAMPLE_REGISTRY), "--early"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert store.exists(store.path("ledgers/billing/period=2026-11/billing.parquet"))
    assert "gov" in result.output
    again = runner.invoke(app, args)
    assert again.exit_code == 0
    assert "closed already" in again.output


def test_close_command_refuses_a_bad_month(tmp_path: Path) -> None:
    result = runner.invoke(app, ["close", "--month", "Nov-2026", "--data-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert "expected YYYY-MM" in result.output


def test_close_refuses_a_month_that_has_not_ended_in_korea(tmp_path: Path) -> None:
    from datetime import UTC, datetime, timedelta

    running = (datetime.now(UTC) + timedelta(hours=9)).strftime("%Y-%m")
    result = runner.invoke(app, ["close", "--month", running, "--data-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert "has not ended in Korea" in result.output and "--early" in result.output
    assert not (tmp_path / "ledgers").exists()
