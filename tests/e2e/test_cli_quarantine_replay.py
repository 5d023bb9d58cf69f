"""An unregistered project: refused, counted in compliance, then replayed once after the registry is amended."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import duckdb
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from spine_events import event  # noqa: E402

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]


def test_replay_after_the_registry_is_amended_counts_once(tmp_path: Path, cli) -> None:
    # given 20 minutes of gov usage on a project the registry does not know yet
    events = [event(f"2026-10-05T03:{m:02d}:00Z", project="new-lab") for m in range(20)]
    path = tmp_path / "e.jsonl"
    path.write_text("\n".join(json.dumps(e) for e in events))
    data = tmp_path / "data"
    old = ["--data-dir", str(data), "--registry", "examples/registry.toml"]
    cli("ingest", str(path), *old)
    cli("consume", "--until-idle", *old)
    listed = cli("quarantine", "list", *old)
    assert "unknown_project" in listed.stdout and "20" in listed.stdout

    # when the project is registered and the quarantine replayed twice
    amended = tmp_path / "registry.toml"
    amended.write_text((REPO / "examples/registry.toml").read_text()
                       + '\n[projects.new-lab]\nentity = "gov"\nclass = "university"\n')
    new = ["--data-dir", str(data), "--registry", str(amended)]
    first = cli("quarantine", "replay", *new)
    second = cli("quarantine", "replay", *new)
    after = cli("quarantine", "list", *new)
    assert quarantine_rows(after.stdout) == [("2026-10", "unknown_project", "0", "20")]
    cli("close", "--month", "2026-10", *new)

    # then the events are billed exactly once and no longer counted as quarantined
    assert "20 events accepted now" in first.stdout
    assert "0 events accepted now" in second.stdout
    db = duckdb.connect()
    billed = db.execute(
        f"select sum(gpu_microseconds) from read_parquet('{data}/ledgers/billing/**/*.parquet') where project = 'new-lab'"
    ).fetchone()[0]
    assert billed == 20 * 60_000_000
    quarantined = db.execute(
        f"select sum(quarantined_gpu_hours) from read_parquet('{data}/ledgers/compliance/**/*.parquet') "
        f"where entity = 'gov'"
    ).fetchone()[0]
    assert quarantined == 0


def quarantine_rows(stdout: str) -> list[tuple[str, ...]]:
    """(period, reason, lines, re-admitted) of each row of the `quarantine list` table, as printed."""
    rows = []
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("│┃").split("│")]
        if len(cells) == 5 and cells[0][:4].isdigit():
            rows.append(tuple(cells[:4]))
    return rows


def test_a_conflicting_duplicate_is_not_readmitted_before_any_replay(tmp_path: Path, cli) -> None:
    # given an event stored, then a second event with its id and other values (a conflicting duplicate)
    first = event("2026-10-05T03:00:00Z")
    conflicting = {**first, "busy_gpu_seconds": 59.0}
    for name, ev in (("a.jsonl", first), ("b.jsonl", conflicting)):
        (tmp_path / name).write_text(json.dumps(ev))
    common = ["--data-dir", str(tmp_path / "data"), "--registry", "examples/registry.toml"]
    for name in ("a.jsonl", "b.jsonl"):
        cli("ingest", str(tmp_path / name), *common)
        cli("consume", "--until-idle", *common)
    # when the quarantine is listed, no replay having run
    listed = cli("quarantine", "list", *common)
    # then the refused line is still refused: its id in raw/ is the *other* event's
    assert quarantine_rows(listed.stdout) == [("2026-10", "conflicting_duplicate", "1", "0")], listed.stdout
    assert "1 line(s) still refused; 0 re-admitted" in listed.stdout
