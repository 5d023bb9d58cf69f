"""Invariant 9 at the dedupe (issue 18, item 7): bit-rot in a raw file, a re-send of an event
in that file, then the restore from backup. The lookup checks the file's SHA-256 against its
commit: the damage is named in one line, nothing is stored twice, and after the restore the
consumer goes on with zero doubles — with half-hour data (a double would bill 1/60 h too
much) and full-hour data (a double would trip the per-hour cap and block the close)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
from spine_events import event
from test_cli_damaged_state import cli, one_error_line

pytestmark = pytest.mark.unit


def write_events(path: Path, events: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(e) for e in events) + "\n")
    return path


def rot_one_id(raw: Path, event_id: str) -> None:
    """The file stays readable Parquet, but one stored id is not what was committed (a flipped
    bit in the id column that decodes without error)."""
    table = pq.read_table(raw)
    ids = table.column("event_id").to_pylist()
    i = ids.index(event_id)
    ids[i] = ("0" if ids[i][0] != "0" else "1") + ids[i][1:]
    table = table.set_column(table.schema.get_field_index("event_id"), "event_id", pl.Series(ids).to_arrow())
    pq.write_table(table, raw, compression="zstd")


@pytest.mark.parametrize("minutes", [30, 60], ids=["half-hour", "full-hour"])
def test_bit_rot_then_a_resend_then_the_restore_stores_nothing_twice(tmp_path: Path, minutes: int) -> None:
    data = tmp_path / "data"
    # given an hour of one GPU's minutes (two GPUs: 2 × minutes events) consumed into one raw file
    events = [event(f"2026-11-02T00:{m:02d}:00Z", gpu=g) for g in ("GPU-A", "GPU-B") for m in range(minutes)]
    assert cli("ingest", str(write_events(tmp_path / "e.jsonl", events)), data=data).returncode == 0
    assert cli("consume", "--until-idle", data=data).returncode == 0
    [raw] = sorted(data.glob("raw/**/*.parquet"))
    backup = tmp_path / "backup.parquet"
    shutil.copy(raw, backup)

    # when a bit rots in the file, and one of its events is re-sent (a collector's spool)
    resent = events[7]
    rot_one_id(raw, resent["event_id"])
    assert cli("ingest", str(write_events(tmp_path / "again.jsonl", [resent])), data=data).returncode == 0

    # then consume stops naming the file and the next step, and stores nothing
    line = one_error_line(cli("consume", "--until-idle", data=data))
    rel = raw.relative_to(data).as_posix()
    assert f"{rel} (" in line and "does not hold the bytes its commit recorded" in line
    assert "restore the file from a backup" in line
    assert sorted(data.glob("raw/**/*.parquet")) == [raw]

    # when the file is restored from the backup, then the consumer goes on: the re-send is a duplicate
    shutil.copy(backup, raw)
    done = cli("consume", "--until-idle", data=data)
    assert done.returncode == 0, done.stderr
    assert "1 duplicates dropped" in done.stdout
    stored = pl.read_parquet(sorted(data.glob("raw/**/*.parquet")))
    assert stored.height == len(events) and stored["event_id"].n_unique() == len(events)

    # and the month closes and bills exactly the truth: 2 GPUs × minutes / 60 GPU-hours
    closed = cli("close", "--month", "2026-11", data=data)
    assert closed.returncode == 0, closed.stderr
    billed = pl.read_parquet(data / "ledgers/billing/period=2026-11/billing.parquet")["gpu_hours"].sum()
    assert float(billed) == pytest.approx(2 * minutes / 60, abs=1e-9)
