"""Damaged state and a full disk, met through the real CLI: one line naming the file, never a
traceback; a long-running consumer waits for space instead of dying, and leaves no temp files."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
from spine_events import event

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
GROUP_FILE = Path("bus/gpu.usage.v1/groups/gpuledger-consumer.json")


def cli(*args: str, data: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gpuledger", *args, "--data-dir", str(data)],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300,
    )


def _env() -> dict[str, str]:
    # the sample registry, named as an operator names theirs (no command falls back to it)
    return {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "400", "GPULEDGER_CONFIG": "",
            "GPULEDGER_REGISTRY": str(REPO / "examples" / "registry.toml")}


def events_file(path: Path, count: int, day: int = 2) -> Path:
    """``count`` valid events of gov/snu-llm on distinct GPUs and minutes of 2026-11-0<day>."""
    lines = [
        json.dumps(event(f"2026-11-{day:02d}T{(i // 60) % 24:02d}:{i % 60:02d}:00Z", node=f"n{i // 1440}", gpu=f"GPU-{i % 8}"))
        for i in range(count)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if not ln.startswith("{")]  # JSON logs aside
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


@pytest.fixture
def stored(tmp_path: Path) -> Path:
    """A data dir with November's events consumed (raw, usage_hourly) and the bus drained."""
    data = tmp_path / "data"
    assert cli("ingest", str(events_file(tmp_path / "e.jsonl", 200)), data=data).returncode == 0
    assert cli("consume", "--until-idle", data=data).returncode == 0
    return data


def test_a_truncated_raw_file_is_named(stored: Path) -> None:
    [raw] = sorted(stored.glob("raw/**/*.parquet"))
    raw.write_bytes(raw.read_bytes()[:100])
    line = one_error_line(cli("close", "--month", "2026-11", data=stored))
    rel = raw.relative_to(stored).as_posix()
    assert f"damaged raw file(s), not rolled up: {rel}" in line and "Restore them from a backup" in line


def test_a_corrupt_billing_ledger_is_named(stored: Path) -> None:
    assert cli("close", "--month", "2026-11", data=stored).returncode == 0
    bill = stored / "ledgers/billing/period=2026-11/billing.parquet"
    data = bytearray(bill.read_bytes())
    for i in range(4, len(data) - 8, 7):  # scramble the pages, keep the magic bytes
        data[i] ^= 0xFF
    bill.write_bytes(bytes(data))
    line = one_error_line(cli("close", "--month", "2026-11", data=stored))
    assert f"{bill}: not a readable Parquet file" in line


def test_a_garbled_delta_log_entry_is_named(stored: Path, tmp_path: Path) -> None:
    newest = sorted((stored / "raw" / "_delta_log").glob("*.json"))[-1]
    newest.write_text('{"add": {"path": "period=2026-11/')
    assert cli("ingest", str(events_file(tmp_path / "more.jsonl", 50, day=3)), data=stored).returncode == 0
    line = one_error_line(cli("consume", "--until-idle", data=stored))
    assert f"{stored / 'raw'}" in line and "Delta log" in line


def test_a_garbled_group_file_is_named(stored: Path) -> None:
    (stored / GROUP_FILE).write_text("{not json")
    line = one_error_line(cli("consume", "--until-idle", data=stored))
    assert f"{stored / GROUP_FILE}: garbled consumer group position" in line


# -- a full disk ----------------------------------------------------------------------------
@contextlib.contextmanager
def small_disk(path: Path, size: str) -> Iterator[Path]:
    """A real tmpfs of ``size`` at ``path`` (needs root); the test fails in CI without it."""
    path.mkdir(parents=True)
    can = os.geteuid() == 0 and shutil.which("mount") is not None
    mounted = can and subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]).returncode == 0
    if not mounted:
        message = "a disk-full test needs a tmpfs mount (root)"
        if os.environ.get("GPULEDGER_CI"):
            pytest.fail(message + "; CI must run it")
        pytest.skip(message)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def fill(disk: Path, leave_bytes: int) -> Path:
    """A ballast file that leaves about ``leave_bytes`` free on ``disk``."""
    ballast = disk / "ballast"
    free = shutil.disk_usage(disk).free
    with open(ballast, "wb") as out:
        out.write(b"\0" * max(free - leave_bytes, 0))
    return ballast


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".tmp" in p.name or p.name.startswith(".trim-")]


def raw_event_ids(data: Path) -> list[str]:
    files = sorted(data.glob("raw/**/*.parquet"))
    return pl.read_parquet(files)["event_id"].to_list() if files else []


def test_a_one_shot_consume_on_a_full_disk_says_so_and_a_rerun_stores_everything_once(tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk", "8m") as data:
        # given events on the bus and a disk with almost no room left for Parquet
        assert cli("ingest", str(events_file(tmp_path / "e.jsonl", 3000)), data=data).returncode == 0
        ballast = fill(data, 16 * 1024)
        # when a one-shot consume runs, then it fails with one line naming the data dir
        line = one_error_line(cli("consume", "--until-idle", data=data))
        assert f"no space left on the device of {data}" in line
        assert temp_files(data / "bus") == []
        # when space is freed and consume runs again, then every event is stored exactly once
        ballast.unlink()
        assert cli("consume", "--until-idle", data=data).returncode == 0
        ids = raw_event_ids(data)
        assert len(ids) == len(set(ids)) == 3000
        assert temp_files(data) == []


def test_a_long_running_consumer_waits_for_space_and_then_stores_everything_once(tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk", "8m") as data:
        # given events on the bus, a full disk, and the long-running consumer started
        assert cli("ingest", str(events_file(tmp_path / "e.jsonl", 3000)), data=data).returncode == 0
        ballast = fill(data, 16 * 1024)
        consumer = subprocess.Popen(
            [sys.executable, "-m", "gpuledger", "consume", "--data-dir", str(data)],
            cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            # when it meets the full disk, then it says so and keeps running
            seen = []
            while (line := consumer.stderr.readline()) and "no space left" not in line:
                seen.append(line)
            assert f"no space left on the device of {data}" in line, "".join(seen)
            assert consumer.poll() is None
            # when space is freed, then it stores the events and commits the whole bus
            ballast.unlink()
            assert wait_until(lambda: _committed(data) == 3)  # one message per node
        finally:
            consumer.send_signal(signal.SIGTERM)
            out, err = consumer.communicate(timeout=120)
        assert consumer.returncode == 0, err
        assert "3,000 events accepted" in out
        ids = raw_event_ids(data)
        assert len(ids) == len(set(ids)) == 3000
        assert temp_files(data) == []


def _committed(data: Path) -> int:
    try:
        return json.loads((data / GROUP_FILE).read_text())["offset"]
    except (FileNotFoundError, ValueError):
        return 0


def wait_until(condition, timeout_s: float = 180.0) -> bool:
    """Poll ``condition`` (bounded): waiting on another process, not timing it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.25)
    return condition()


def test_bus_trim_drops_what_the_consumer_stored_and_the_bus_goes_on(stored: Path, tmp_path: Path) -> None:
    # given 200 events ingested and consumed (the fixture): the log holds them all
    log = stored / "bus" / "gpu.usage.v1" / "log"
    size = log.stat().st_size
    assert size > 0
    # when the bus is trimmed, then the consumed log is gone from disk
    trimmed = cli("bus", "trim", data=stored)
    assert trimmed.returncode == 0, trimmed.stderr
    assert f"dropped 1 records ({size:,} bytes)" in trimmed.stdout
    [segment] = (stored / "bus" / "gpu.usage.v1").glob("log*")
    assert segment.stat().st_size == 0
    # and the next day's events go through as before, nothing consumed twice
    assert cli("ingest", str(events_file(tmp_path / "day3.jsonl", 50, day=3)), data=stored).returncode == 0
    consumed = cli("consume", "--until-idle", data=stored)
    assert "50 events accepted" in consumed.stdout and "0 duplicates" in consumed.stdout
    assert len(set(raw_event_ids(stored))) == 250


def test_a_group_commit_on_a_full_disk_fails_cleanly_and_leaves_no_temp_file(tmp_path: Path) -> None:
    from streams.localbus import LocalBus

    with small_disk(tmp_path / "disk", "1m") as disk:
        # given a consumer that read two records, and a disk with no room left
        bus = LocalBus(disk / "bus")
        producer = bus.producer("t")
        producer.send("n", b"a")
        producer.send("n", b"b")
        producer.flush()
        consumer = bus.consumer("t", "g")
        consumer.commit({0: consumer.poll_batch(1, 0.0)[0].offset + 1})
        consumer.poll_batch(1, 0.0)
        ballast = fill(disk, 0)
        # when it commits, then the disk-full error comes out, the saved position is the old
        #   one, and no temp file is left behind
        with pytest.raises(OSError) as failure:
            consumer.commit({0: 2})
        assert failure.value.errno == errno.ENOSPC
        assert temp_files(disk / "bus") == []
        assert json.loads((disk / "bus/t/groups/g.json").read_text())["offset"] == 1
        # and once there is room again the commit goes through
        ballast.unlink()
        consumer.commit({0: 2})
        consumer.close()
        assert json.loads((disk / "bus/t/groups/g.json").read_text())["offset"] == 2


def test_a_truncated_raw_file_is_named_by_consume(stored: Path, tmp_path: Path) -> None:
    # given the day's raw file cut to 100 bytes, and more events of that day on the bus
    [raw] = sorted(stored.glob("raw/**/*.parquet"))
    raw.write_bytes(raw.read_bytes()[:100])
    assert cli("ingest", str(events_file(tmp_path / "more.jsonl", 300)), data=stored).returncode == 0
    # when consume reads the day's stored ids to drop duplicates, then it names the file
    line = one_error_line(cli("consume", "--until-idle", data=stored))
    assert f"{raw}: not a readable Parquet file" in line
