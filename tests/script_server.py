"""What the test servers the project's scripts start have in common (scripts/kafka.sh,
scripts/s3.sh): an OS-assigned port, running one subcommand of the script in the server's
own environment, and the tail of its log for a failure message."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path


def free_port() -> int:
    """A port the OS just handed out (bind to port 0), free again once the socket closes."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ScriptServer:
    """A server in ``home`` driven by ``script`` (``up``/``down``/``status``…) with ``_env``."""

    script: Path
    log_name: str
    what: str

    home: Path
    _env: dict[str, str]

    def _run(self, command: str, timeout_s: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(self.script), command],
            env=self._env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )

    def log_tail(self, lines: int = 60) -> str:
        log = self.home / self.log_name
        if not log.exists():
            return f"(no {self.what} log)"
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
