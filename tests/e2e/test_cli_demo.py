"""``gpuledger demo`` on a small fleet: runs, prints the summary, its ledgers reconcile to the
events, and a second run gives the same sealed totals and statement numbers."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest

pytestmark = pytest.mark.e2e


def test_demo_runs_and_reconciles(tmp_path: Path, cli) -> None:
    data = tmp_path / "demo"
    result = cli("demo", "--data-dir", str(data), "--month", "2026-10", "--nodes-per-entity", "2")
    for entity in ("gov", "samsung", "hyundai", "skt", "naver"):
        assert entity in result.stdout
    assert "billing ledger:" in result.stdout and "manifest:" in result.stdout

    db = duckdb.connect()
    raw_total, raw_unattributed = db.execute(
        f"select sum(gpu_microseconds), sum(gpu_microseconds) filter (where project = 'unattributed') "
        f"from read_parquet('{data}/raw/**/*.parquet') where period = '2026-10'"
    ).fetchone()
    billed = db.execute(  # the month's usage lines (its corrections bill earlier months' events)
        f"select sum(gpu_microseconds) from read_parquet('{data}/ledgers/billing/period=2026-10/*.parquet') "
        f"where charge_class = 'usage'"
    ).fetchone()[0]
    reported, unattributed = db.execute(
        f"select sum(reported_gpu_hours), sum(unattributed_gpu_hours) "
        f"from read_parquet('{data}/ledgers/compliance/period=2026-10/*.parquet') where entity <> 'ALL'"
    ).fetchone()
    # invariant 1: what was billed plus what was unattributed is exactly what the events carried
    assert billed + raw_unattributed == raw_total
    assert abs(float(reported) - raw_total / 3.6e9) < 1e-3 * 10  # 6-decimal hours per row
    assert abs(float(unattributed) - raw_unattributed / 3.6e9) < 1e-2
    # the silent samsung node shows as unreported capacity, never as zero-filled usage
    silent = db.execute(
        f"select count(*) from read_parquet('{data}/raw/**/*.parquet') where node = 'samsung-n01' "
        f"and interval_start >= timestamp '2026-10-12 15:00:00' and interval_start < timestamp '2026-10-14 15:00:00'"
    ).fetchone()[0]
    assert silent == 0
    # MIG instances of one physical GPU never exceed the hour together (invariant 2)
    over = db.execute(
        f"select count(*) from (select gpu_uuid, hour_start, sum(gpu_microseconds) us "
        f"from read_parquet('{data}/usage_hourly/**/*.parquet') group by all) where us > 3600000000"
    ).fetchone()[0]
    assert over == 0
    # the previous month's last day ran too, and was closed first (sealed before the month)
    assert "closed 2026-09:" in result.stderr and (data / "manifests" / "2026-09.json").is_file()
    # deterministic: the same run into another directory seals the same totals and content
    again = tmp_path / "again"
    cli("demo", "--data-dir", str(again), "--month", "2026-10", "--nodes-per-entity", "2")
    for period in ("2026-09", "2026-10"):
        first, second = (json.loads((d / "manifests" / f"{period}.json").read_text()) for d in (data, again))
        assert first["totals"] == second["totals"] and first["content_sha256"] == second["content_sha256"]


def test_demo_refuses_to_wipe_data_it_did_not_make(tmp_path: Path, cli) -> None:
    precious = tmp_path / "ledger"
    precious.mkdir()
    (precious / "keep.txt").write_text("not the demo's")
    result = cli("demo", "--data-dir", str(precious), check=False)
    assert result.returncode == 1
    assert "did not make" in result.stderr
    assert (precious / "keep.txt").exists()
