"""A data file the log lists is gone and there is no backup (issue 18, item 9).

Before: consume stopped on that hour with a raw ``FileNotFoundError … POLARS_VERBOSE`` line and
the only way on was a backup. Now: one line naming the file, the hours it held and the next
step; ``gpuledger storage record-loss`` records the loss (which file, how many events, which
hours, whose usage where known, who and why) and removes the file from the table; the month's
close flags ``data_lost`` in the compliance ledger, says the loss in its findings, bills only
what raw can prove, and seals the loss record."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from spine_events import event
from test_cli_damaged_state import cli, one_error_line
from test_dedupe_verified_bytes import write_events

from storage.dataset import Store
from storage.rollup import roll_up

pytestmark = pytest.mark.unit


def two_raw_files(tmp_path: Path) -> tuple[Path, Path, Path, list[dict]]:
    """Hour 00 (gov/snu-llm, 30 events) and hour 01 (samsung, 20 events) of 2026-11-02, one
    raw file each; returns the data dir, both files and hour 00's events."""
    data = tmp_path / "data"
    first = [event(f"2026-11-02T00:{m:02d}:00Z") for m in range(30)]
    second = [event(f"2026-11-02T01:{m:02d}:00Z", node="n2", gpu="GPU-S", entity="samsung",
                    project="samsung-foundry-ai") for m in range(20)]
    for name, events in (("a", first), ("b", second)):
        assert cli("ingest", str(write_events(tmp_path / f"{name}.jsonl", events)), data=data).returncode == 0
        assert cli("consume", "--until-idle", data=data).returncode == 0
    files = sorted(data.glob("raw/**/*.parquet"), key=lambda p: p.stat().st_mtime_ns)
    assert len(files) == 2
    return data, files[0], files[1], first


def compliance(data: Path) -> pl.DataFrame:
    return pl.read_parquet(data / "ledgers/compliance/period=2026-11/compliance.parquet")


def billed_hours(data: Path) -> float:
    return float(pl.read_parquet(data / "ledgers/billing/period=2026-11/billing.parquet")["gpu_hours"].sum())


def test_a_lost_file_is_named_then_recorded_and_the_month_closes_honestly(tmp_path: Path) -> None:
    data, lost, kept, first = two_raw_files(tmp_path)
    rel = lost.relative_to(data).as_posix()
    lost.unlink()
    # when a re-send of one of its events arrives, then consume names the file, its hours, what to do
    assert cli("ingest", str(write_events(tmp_path / "again.jsonl", first[3:4])), data=data).returncode == 0
    line = one_error_line(cli("consume", "--until-idle", data=data))
    assert f"{rel} (30 rows, 2026-11-02T00:00:00Z to 2026-11-02T00:29:00Z) is listed by the table's Delta log but is gone" in line
    assert f"gpuledger storage record-loss --file {rel} --reason TEXT" in line and "POLARS" not in line
    # when the operator records the loss, then the table no longer lists it and consume goes on
    done = cli("storage", "record-loss", "--file", rel, "--reason", "disk failed, no backup (ticket 7)", data=data)
    assert done.returncode == 0, done.stderr
    assert f"recorded loss of {rel}: 30 rows of 2026-11-02T00:00:00Z to 2026-11-02T00:29:00Z" in done.stdout
    assert rel.removeprefix("raw/") not in Store(data).table("raw").files()
    assert cli("consume", "--until-idle", data=data).returncode == 0  # the re-send is stored: its first copy is gone
    # and the close bills what raw proves (20 + 1 events), flags the loss and says it
    closed = cli("close", "--month", "2026-11", data=data)
    assert closed.returncode == 0, closed.stderr
    said = " ".join(closed.stdout.split())
    assert f"raw data lost: {rel} (30 events, 2026-11-02T00:00:00Z – 2026-11-02T00:29:00Z UTC)" in said
    assert "Recorded" in said and "disk failed, no backup (ticket 7)" in said
    assert billed_hours(data) == pytest.approx(21 / 60)
    national = compliance(data).filter(pl.col("entity") == "ALL")
    assert national.height and all("data_lost" in b for b in national["breaches"].to_list())
    # and the loss record is sealed with the month: verify checks it, the auditor pack carries
    # it (its SHA256SUMS too), and verify names it when it is changed
    assert cli("verify", "--all", data=data).returncode == 0
    [record] = (data / "losses" / "raw").glob("*.json")
    exported = cli("export", "--month", "2026-11", "--out", str(tmp_path / "packs"), data=data)
    assert exported.returncode == 0, exported.stderr
    auditor = tmp_path / "packs" / "2026-11" / "auditor"
    assert (auditor / "losses" / "raw" / record.name).read_bytes() == record.read_bytes()
    assert f"losses/raw/{record.name}" in (auditor / "SHA256SUMS").read_text()
    doc = json.loads(record.read_text())
    assert (doc["rows"], doc["recorded_by"], doc["lost_usage"]) == (30, doc["recorded_by"], None)
    record.write_text(record.read_text().replace("ticket 7", "ticket 8"))
    failed = cli("verify", "--all", data=data)
    assert failed.returncode == 1 and record.name in failed.stdout + failed.stderr


def test_a_lost_file_of_a_rolled_up_day_says_whose_usage_it_held(tmp_path: Path) -> None:
    data, lost, _, _ = two_raw_files(tmp_path)
    roll_up(Store(data))  # the hourly job ran after both files were committed
    rel = lost.relative_to(data).as_posix()
    lost.unlink()
    assert cli("storage", "record-loss", "--file", rel, "--reason", "no backup", data=data).returncode == 0
    [record] = (data / "losses" / "raw").glob("*.json")
    assert json.loads(record.read_text())["lost_usage"] == [
        {"entity": "gov", "project": "snu-llm", "gpu_model": "NVIDIA B200", "gpu_microseconds": 30 * 60_000_000, "events": 30}
    ]
    closed = cli("close", "--month", "2026-11", data=data)
    assert closed.returncode == 0, closed.stderr
    rows = compliance(data)
    flagged = rows.filter(pl.col("breaches").list.contains("data_lost"))
    assert sorted(zip(flagged["entity"], flagged["gpu_model"])) == [("ALL", "NVIDIA B200"), ("gov", "NVIDIA B200")]
    assert "gov/snu-llm NVIDIA B200 0.5000 GPU-h" in " ".join(closed.stdout.split())
    assert billed_hours(data) == pytest.approx(20 / 60)


def test_record_loss_refuses_a_present_file_and_a_sealed_month(tmp_path: Path) -> None:
    data, lost, kept, _ = two_raw_files(tmp_path)
    rel = kept.relative_to(data).as_posix()
    line = one_error_line(cli("storage", "record-loss", "--file", rel, "--reason", "x", data=data))
    assert "is present and holds the bytes its commit recorded: it is not lost" in line
    assert cli("close", "--month", "2026-11", data=data).returncode == 0
    kept.unlink()
    line = one_error_line(cli("storage", "record-loss", "--file", rel, "--reason", "x", data=data))
    assert "which a close has sealed" in line and "restore the file from a backup" in line


def test_impossible_usage_names_the_files_that_hold_it_not_a_verify_that_finds_nothing(tmp_path: Path) -> None:
    # given one full hour of a GPU stored twice (two writers that each thought it new): the files
    # hash as committed, so `verify --all` has nothing to name
    from spine_events import ACCOUNTS, jsonl

    from streams.pipeline import BatchProcessor

    hour = [event(f"2026-11-02T00:{m:02d}:00Z") for m in range(60)]
    for name in ("a", "b"):  # separate stores' processors: their windows never see each other
        BatchProcessor(Store(tmp_path / name), ACCOUNTS).process([("m", jsonl(*hour))])
    data = tmp_path / "a"
    [extra] = Store(tmp_path / "b").files("raw")
    rel = Path(extra).relative_to(tmp_path / "b" / "raw").as_posix()
    copy = data / "raw" / rel.replace("part-", "part-copy-")
    copy.write_bytes(Path(extra).read_bytes())
    store = Store(data)
    [added] = store.table("raw").files()
    import hashlib

    from storage.delta import NewFile

    digest = hashlib.sha256(copy.read_bytes()).hexdigest()
    store.commit_files("raw", [NewFile(copy.relative_to(data / "raw").as_posix(), copy.stat().st_size, 60, digest, {})])
    # when the month is closed, then the refusal names both files and no longer promises verify would
    line = one_error_line(cli("close", "--month", "2026-11", data=data))
    assert "impossible usage in raw/period=2026-11/date=2026-11-02" in line
    assert f"raw/{added}" in line and f"raw/{copy.relative_to(data / 'raw').as_posix()}" in line
    assert "verify --all` names it" not in line and "the files hash as committed" in line
