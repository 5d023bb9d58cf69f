"""A finance clerk exports a sealed month with another registry: one line, exit 1, no pack;
without --registry the sealed registry speaks, whatever the default registry says now."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.conftest import REPO, run_cli

pytestmark = pytest.mark.e2e


def _month(data: Path) -> None:
    import sys

    sys.path.insert(0, str(REPO / "tests" / "unit"))
    from spine_events import event, jsonl

    from accounting.close import close_month
    from accounting.registry import load_registry
    from gpuledger.wiring import accounts_of
    from storage.dataset import Store
    from storage.rollup import roll_up
    from streams.pipeline import BatchProcessor

    registry = load_registry(REPO / "examples" / "registry.toml")
    store = Store(data)
    events = [event(f"2026-11-02T03:{m:02d}:00Z", project="samsung-foundry-ai", entity="samsung") for m in range(30)]
    BatchProcessor(store, accounts_of(registry)).process([("b", jsonl(*events))])
    roll_up(store)
    close_month(store, registry, "2026-11")


def test_export_and_report_with_another_registry_refuse_in_one_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _month(data)
    other = tmp_path / "other.toml"
    other.write_text((REPO / "examples" / "registry.toml").read_text().replace("vat_percent = 10", "vat_percent = 0"))
    for command in ("export", "report"):
        done = run_cli(command, "--month", "2026-11", "--data-dir", str(data), "--registry", str(other),
                       "--out", str(tmp_path / command), check=False)
        said = (done.stdout + done.stderr).strip()
        assert done.returncode == 1, said
        assert "differs from the registry 2026-11 was sealed with" in said and "vat_percent = 10 → vat_percent = 0" in said
        assert len(said.splitlines()) == 1 and "Traceback" not in said
        assert not (tmp_path / command / "2026-11").exists()
    # the sealed registry speaks when none is asked for, even if the configured default moved on
    done = run_cli("export", "--month", "2026-11", "--data-dir", str(data), "--out", str(tmp_path / "ok"),
                   "--raw-events", env={"GPULEDGER_REGISTRY": str(other)})
    summary = (tmp_path / "ok" / "2026-11" / "finance" / "summary.csv").read_text()
    content = json.loads((data / "manifests" / "2026-11.json").read_text())["content_sha256"]
    assert f"GL-202611-SAMSUNG-{content[:8].upper()}" in summary
    import csv
    import io

    (row,) = [r for r in csv.DictReader(io.StringIO(summary)) if r["entity"] == "samsung"]
    assert int(row["vat_krw"]) > 0  # the sealed VAT rate (10 %), not the default's 0
    assert (tmp_path / "ok" / "2026-11" / "auditor" / "raw-events.sha256").exists()
    assert done.returncode == 0
