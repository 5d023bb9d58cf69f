"""One location type for the data dir (issue 18, item 11; STYLE 17): ``s3://bucket/prefix`` is
a value, never a relative local path. ``Path("s3://b/p")`` is ``s3:/b/p``: the heartbeat joined
onto it filled a directory literally named ``s3:`` wherever the consumer ran (two such files
were committed)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from gpuledger.health import HeartbeatFile
from gpuledger.settings import Settings
from streams.metrics import ConsumerProgress
from storage.location import Location, create_new, read_bytes, write_atomic

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("given", ["s3://bucket/prefix", "s3://bucket/prefix/", Path("s3://bucket/prefix")])
def test_an_s3_data_dir_is_an_s3_location_however_it_is_spelt(given) -> None:
    location = Location.parse(given)
    assert location.is_s3 and location.url == "s3://bucket/prefix"
    assert location.join("consumer.heartbeat.json").url == "s3://bucket/prefix/consumer.heartbeat.json"


def test_the_heartbeat_of_an_s3_data_dir_lives_in_the_store_not_in_a_local_s3_directory() -> None:
    settings = Settings(data_dir=Path("s3://bucket/prefix"))
    # one per host: consumers on several machines share one S3 data dir
    assert settings.heartbeat_file.url == f"s3://bucket/prefix/heartbeats/{socket.gethostname()}.json"
    local = Settings(data_dir=Path("gpuledger-data"))
    assert local.heartbeat_file.url == str(Path("gpuledger-data").absolute() / "consumer.heartbeat.json")


def test_local_writes_are_whole_and_create_new_creates_once(tmp_path: Path) -> None:
    target = Location.parse(tmp_path / "a" / "f.json")
    write_atomic(target, b"one")
    write_atomic(target, b"two")
    assert read_bytes(target) == b"two" and sorted(os.listdir(tmp_path / "a")) == ["f.json"]
    fresh = Location.parse(tmp_path / "b.json")
    assert create_new(fresh, b"first") is True
    assert create_new(fresh, b"second") is False
    assert read_bytes(fresh) == b"first" and sorted(p.name for p in tmp_path.iterdir()) == ["a", "b.json"]


def test_no_s3_directory_is_committed_and_git_ignores_one() -> None:
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert not [line for line in tracked.splitlines() if line.startswith("s3:") or "/s3:/" in line]
    probe = subprocess.run(["git", "check-ignore", "-q", "s3:/bucket/x.json"], cwd=REPO, check=False)
    assert probe.returncode == 0


def test_an_s3_consumers_heartbeat_never_lands_in_a_local_s3_directory(tmp_path: Path, monkeypatch) -> None:
    # given a consumer of an s3:// data dir whose endpoint does not answer, in a scratch directory
    for key, value in {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "k",
                       "AWS_SECRET_ACCESS_KEY": "s", "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    settings = Settings(data_dir=Path("s3://bucket/prefix"))
    # when it writes its heartbeat the way `consume` does (a failed write is logged, not raised)
    HeartbeatFile(settings.heartbeat_file, s3_options=settings.storage.s3_options()).write(
        ConsumerProgress(started_s=1.0, last_poll_s=None, last_progress_s=1.0, last_commit_s=None, batches=0,
                         lag=None, lag_unit="records")
    )
    # then nothing appears locally, and `health` from here fails with one line, creating nothing
    assert list(tmp_path.iterdir()) == []
    env = {**os.environ, "PYTHONPATH": str(REPO), "GPULEDGER_CONFIG": ""}
    proc = subprocess.run([sys.executable, "-m", "gpuledger", "health", "--data-dir", "s3://bucket/prefix"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "args",
    [("ingest", "EVENTS"), ("consume", "--until-idle"), ("demo",), ("collect", "--simulate", "--once")],
    ids=["ingest", "consume", "demo", "collect"],
)
def test_no_command_makes_a_local_s3_directory_for_an_s3_data_dir(tmp_path: Path, args: tuple[str, ...]) -> None:
    # given an s3:// data dir and the embedded bus (which lives on this machine's disk only)
    events = tmp_path / "in" / "e.jsonl"
    events.parent.mkdir()
    events.write_text("")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "GPULEDGER_CONFIG": "", "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
           "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "AWS_REGION": "us-east-1",
           "GPULEDGER_REGISTRY": str(REPO / "examples" / "registry.toml")}
    argv = [str(events) if a == "EVENTS" else a for a in args]
    proc = subprocess.run([sys.executable, "-m", "gpuledger", *argv, "--data-dir", "s3://bucket/prefix"],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    # then it is refused in one line, and nothing named s3: appears where it ran
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "cannot use the data dir s3://bucket/prefix" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert list(cwd.iterdir()) == []
