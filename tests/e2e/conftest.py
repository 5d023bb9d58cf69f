"""End-to-end tests run the real ``gpuledger`` CLI in a subprocess, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """``python -m gpuledger ARGS``; fails the test with the output when ``check`` and exit != 0."""
    full_env = {**os.environ, "COLUMNS": "120", "GPULEDGER_CONFIG": "", **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "gpuledger", *args],
        cwd=cwd or REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check and proc.returncode != 0:
        pytest.fail(f"gpuledger {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def cli():
    return run_cli
