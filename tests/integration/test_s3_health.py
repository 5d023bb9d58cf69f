"""``gpuledger health`` for a consumer whose data dir is on S3, asked from any directory
(issue 18, item 11): the heartbeat lives in the store, and no local ``s3:`` directory appears
where the consumer or the health check runs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpuledger.health import HeartbeatFile
from gpuledger.settings import load_settings
from streams.metrics import ConsumerProgress

pytestmark = [pytest.mark.integration, pytest.mark.s3]

REPO = Path(__file__).resolve().parents[2]


def test_health_reads_an_s3_consumers_heartbeat_from_another_directory(s3, s3_prefix: str, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in s3.environ().items():
        monkeypatch.setenv(key, value)
    data_dir = s3.url(s3_prefix, "data")
    consumer_cwd, health_cwd = tmp_path / "consumer", tmp_path / "elsewhere"
    consumer_cwd.mkdir()
    health_cwd.mkdir()
    # given a consumer (in its own working directory) writing its heartbeat where consume does
    monkeypatch.chdir(consumer_cwd)
    settings = load_settings(data_dir=Path(data_dir))
    now = time.time()
    HeartbeatFile(settings.heartbeat_file, s3_options=settings.storage.s3_options()).write(
        ConsumerProgress(started_s=now - 60, last_poll_s=now, last_progress_s=now, last_commit_s=now,
                         batches=3, lag={0: 0}, lag_unit="records")
    )
    # when health is asked from another directory, then it finds the beat in the store
    env = {**os.environ, "PYTHONPATH": str(REPO), "GPULEDGER_CONFIG": ""}
    proc = subprocess.run([sys.executable, "-m", "gpuledger", "health", "--data-dir", data_dir],
                          cwd=health_cwd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "healthy: 3 batches" in proc.stdout
    # and nothing local is named s3: in either directory
    assert list(consumer_cwd.iterdir()) == [] and list(health_cwd.iterdir()) == []
