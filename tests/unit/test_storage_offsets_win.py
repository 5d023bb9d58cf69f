"""Storage's offsets are the truth on the local bus (issue 18, items 2-4), through the real CLI.

The bus's saved position is a hint: a lost newest raw commit is read again, a position moved
ahead is overridden and named, and offsets that restarted (the bus re-created) stop the
consumer with one line and the command that re-bases the partition deliberately.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest
from deltalake import DeltaTable
from test_cli_damaged_state import GROUP_FILE, cli, events_file, one_error_line

from storage.dataset import Store

pytestmark = pytest.mark.unit


def raw_ids(data: Path) -> pl.Series:
    files = Store(data).files("raw")
    return pl.read_parquet(files)["event_id"] if files else pl.Series("event_id", [], pl.String())


def consumed(data: Path, tmp_path: Path, name: str, count: int, day: int) -> None:
    assert cli("ingest", str(events_file(tmp_path / name, count, day=day)), data=data).returncode == 0
    assert cli("consume", "--until-idle", data=data).returncode == 0


def test_a_lost_newest_raw_commit_is_read_again_from_storage_s_offset(tmp_path: Path) -> None:
    data = tmp_path / "data"
    consumed(data, tmp_path, "a.jsonl", 300, day=2)
    consumed(data, tmp_path, "b.jsonl", 200, day=3)
    # when raw's newest commit is lost (a crash before the entry was durable, a restore)
    newest = sorted((data / "raw" / "_delta_log").glob("*.json"))[-1]
    newest.unlink()
    assert raw_ids(data).len() == 300
    # then the next consume resumes where raw's offsets say, not where the bus's group file does
    run = cli("consume", "--until-idle", data=data)
    assert run.returncode == 0, run.stderr
    ids = raw_ids(data)
    assert ids.len() == ids.n_unique() == 500


def test_a_bus_position_moved_ahead_is_overridden_by_storage_and_named(tmp_path: Path) -> None:
    data = tmp_path / "data"
    consumed(data, tmp_path, "a.jsonl", 300, day=2)
    assert cli("ingest", str(events_file(tmp_path / "b.jsonl", 200, day=3)), data=data).returncode == 0
    # given a group file moved ahead to a valid record boundary (the end of the log)
    ahead = tmp_path / "ahead"
    shutil.copytree(data, ahead)
    assert cli("consume", "--until-idle", data=ahead).returncode == 0
    shutil.copy(ahead / GROUP_FILE, data / GROUP_FILE)
    # when the consumer starts, storage's offset wins and the override is named
    run = cli("consume", "--until-idle", data=data)
    assert run.returncode == 0, run.stderr
    assert "is ahead of storage" in run.stderr and "storage wins" in run.stderr
    ids = raw_ids(data)
    assert ids.len() == ids.n_unique() == 500


def test_offsets_that_restarted_stop_the_consumer_until_a_deliberate_rebase(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for day in (2, 4, 5):  # three messages: offsets 0, 1 and 2
        consumed(data, tmp_path, f"{day}.jsonl", 100, day=day)
    # when the bus is re-created (its offsets restart at 0) and new events arrive
    shutil.rmtree(data / "bus")
    assert cli("ingest", str(events_file(tmp_path / "b.jsonl", 5, day=3)), data=data).returncode == 0
    # then the consumer stops with one line naming the partition, both offsets and the command
    line = one_error_line(cli("consume", "--until-idle", data=data))
    assert "partition 0 of gpu.usage.v1: storage holds it up to offset 2, but the local bus's log ends at offset 1" in line
    assert "gpuledger offsets rebase --topic gpu.usage.v1 --partition 0 --to" in line
    assert raw_ids(data).len() == 300  # nothing silently skipped as "already stored", nothing stored
    # and the operator's re-base is recorded in the tables' history, after which the new events are stored
    rebase = cli("offsets", "rebase", "--topic", "gpu.usage.v1", "--partition", "0", "--to", "0",
                 "--reason", "bus directory re-created after a disk swap", data=data)
    assert rebase.returncode == 0, rebase.stderr
    assert "resumes at offset 0" in rebase.stdout
    notes = [json.loads(h["gpuledger.rebase"]) for h in DeltaTable(str(data / "raw")).history() if "gpuledger.rebase" in h]
    assert [(n["stream"], n["from"], n["to"], n["reason"]) for n in notes] == [
        ("gpuledger-consumer/gpu.usage.v1/0", 2, -1, "bus directory re-created after a disk swap")
    ]
    assert notes[0]["operator"]
    assert cli("consume", "--until-idle", data=data).returncode == 0
    ids = raw_ids(data)
    assert ids.len() == ids.n_unique() == 305


def test_a_store_that_holds_nothing_of_a_trimmed_log_stops_and_names_the_trimmed_records(tmp_path: Path) -> None:
    data = tmp_path / "data"
    consumed(data, tmp_path, "a.jsonl", 200, day=2)
    assert cli("bus", "trim", data=data).returncode == 0
    # given the store's tables lost (restored empty) while the bus, trimmed past them, remains
    for table in ("raw", "quarantine", "usage_hourly"):
        shutil.rmtree(data / table, ignore_errors=True)
    assert cli("ingest", str(events_file(tmp_path / "b.jsonl", 5, day=3)), data=data).returncode == 0
    # then the consumer does not silently start at the first record kept: it names what was trimmed
    line = one_error_line(cli("consume", "--until-idle", data=data))
    assert "storage holds nothing of it, but the log now starts at offset 1" in line
    assert "records 0..0 were trimmed" in line and "gpuledger offsets rebase --topic gpu.usage.v1" in line
    assert raw_ids(data).len() == 0
    # and a deliberate re-base (recorded in the tables' history) lets it go on with what is left
    rebase = cli("offsets", "rebase", "--topic", "gpu.usage.v1", "--partition", "0", "--to", "1",
                 "--reason", "the first message is accounted for in the old store", data=data)
    assert rebase.returncode == 0, rebase.stderr
    assert cli("consume", "--until-idle", data=data).returncode == 0
    assert raw_ids(data).len() == 5
