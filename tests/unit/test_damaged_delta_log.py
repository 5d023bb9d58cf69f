"""A damaged ``_delta_log`` (issue 18, item 8): a garbled ``_last_checkpoint`` made close and
verify die with a JSONDecodeError traceback in the log reader. Now: where the log can be read
without it, close and verify carry on and say so in one warning line naming the file; where it
cannot, one line names the file and the next step."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_cli_damaged_state import cli, events_file, one_error_line

pytestmark = pytest.mark.unit


@pytest.fixture
def checkpointed(tmp_path: Path) -> Path:
    """November's events consumed in several commits, with a checkpoint of raw's log."""
    data = tmp_path / "data"
    for i in range(3):
        assert cli("ingest", str(events_file(tmp_path / f"e{i}.jsonl", 60, day=2 + i)), data=data).returncode == 0
        assert cli("consume", "--until-idle", data=data).returncode == 0
    from deltalake import DeltaTable  # the test makes the checkpoint delta-rs makes every 100 commits

    DeltaTable(str(data / "raw")).create_checkpoint()
    assert (data / "raw/_delta_log/_last_checkpoint").exists()
    return data


def warning_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if "_delta_log" in ln]


@pytest.mark.parametrize("garble", ["{garbled", ""], ids=["half-json", "empty"])
def test_a_garbled_last_checkpoint_is_named_and_close_and_verify_carry_on(checkpointed: Path, garble: str) -> None:
    (checkpointed / "raw/_delta_log/_last_checkpoint").write_text(garble)
    closed = cli("close", "--month", "2026-11", data=checkpointed)
    assert closed.returncode == 0 and "Traceback" not in closed.stderr, closed.stderr
    [line] = warning_lines(closed.stderr)
    assert "raw/_delta_log/_last_checkpoint is damaged" in line and "using the newest checkpoint" in line
    verified = cli("verify", "--all", data=checkpointed)
    assert verified.returncode == 0 and "Traceback" not in verified.stderr, verified.stdout + verified.stderr
    assert "raw/_delta_log/_last_checkpoint is damaged" in verified.stderr


def test_a_garbled_checkpoint_file_falls_back_to_the_json_entries(checkpointed: Path) -> None:
    [checkpoint] = (checkpointed / "raw/_delta_log").glob("*.checkpoint.parquet")
    checkpoint.write_bytes(b"PAR1 not really")
    verified = cli("verify", "--all", data=checkpointed)
    assert "Traceback" not in verified.stderr, verified.stderr
    assert f"{checkpoint.name} is damaged" in verified.stderr and "reading the log from version 0 instead" in verified.stderr


def test_a_garbled_log_entry_is_named_in_one_line(checkpointed: Path, tmp_path: Path) -> None:
    # given one more commit after the checkpoint, and that log entry garbled
    assert cli("ingest", str(events_file(tmp_path / "late.jsonl", 30, day=9)), data=checkpointed).returncode == 0
    assert cli("consume", "--until-idle", data=checkpointed).returncode == 0
    newest = sorted((checkpointed / "raw" / "_delta_log").glob("0*.json"))[-1]
    newest.write_text('{"add": {"path": "period=2026-11/')
    # then close and verify --all each say so in one line naming the table's log
    for args in (("close", "--month", "2026-11"), ("verify", "--all")):
        line = one_error_line(cli(*args, data=checkpointed))
        assert "Delta log" in line or f"raw/_delta_log/{newest.name} is damaged" in line, line
