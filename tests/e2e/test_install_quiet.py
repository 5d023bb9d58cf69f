"""`make demo` installs the project editable (`pip install -q -e .`) before the demo runs: that
install prints nothing, no build-backend warning in the newcomer's first screen (issue 17)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]


def test_the_editable_install_prints_no_warning(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "venv", str(tmp_path / "venv")], check=True)
    pip = tmp_path / "venv" / "bin" / "pip"
    # as the Makefile does: a current pip is the one that shows a build backend's warnings
    subprocess.run([str(pip), "install", "-q", "--upgrade", "pip"], check=True, capture_output=True, timeout=600)
    # --no-deps: the project's own build is what could warn; its dependencies are the venv's business
    done = subprocess.run([str(pip), "install", "-q", "--no-deps", "-e", str(REPO)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    printed = (done.stdout + done.stderr).replace(
        "[notice] A new release of pip is available", "").replace("[notice] To update, run:", "")
    assert "arning" not in printed, printed
