"""A real S3-compatible server (SeaweedFS ``weed mini``) for the tests, through ``scripts/s3.sh``.

The server is the one ``make s3-up`` gives, here in a temporary home with an OS-assigned S3
port (the script picks free ports for everything else it opens) and fresh credentials. A
server that does not start FAILS the tests that need it with the tail of its log: these
tests never skip.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import subprocess
from pathlib import Path

import pytest
from script_server import ScriptServer, free_port

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "s3.sh"
BUILD_TIMEOUT_S = 45 * 60  # a first build compiles SeaweedFS: ~15 minutes on 2 cores
START_TIMEOUT_S = 120


@dataclasses.dataclass(frozen=True, slots=True)
class S3Endpoint:
    """Where the server is and how to sign for it: what a client needs, nothing else."""

    endpoint_url: str
    access_key: str
    secret_key: str = dataclasses.field(repr=False)
    region: str
    bucket: str

    def environ(self) -> dict[str, str]:
        """The standard variables every S3 tool reads (``AWS_*``), for a subprocess."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
            "AWS_ALLOW_HTTP": "true",
        }

    def storage_options(self) -> dict[str, str]:
        """``deltalake`` storage options: the variables above plus etag conditional puts,
        which make concurrent commits from several writers safe on this server."""
        return self.environ() | {"conditional_put": "etag"}

    def url(self, *parts: str) -> str:
        """``s3://<bucket>/<parts…>``."""
        return "/".join([f"s3://{self.bucket}", *parts])


class S3Server(ScriptServer):
    """One ``weed mini`` in ``home``; ``stop()`` and ``start()`` keep its data."""

    script, log_name, what = SCRIPT, "weed.log", "server"

    def __init__(self, home: Path, bucket: str = "gpuledger-test"):
        self.home = home
        self.endpoint = S3Endpoint(
            endpoint_url=f"http://127.0.0.1:{free_port()}",
            access_key=f"test-{secrets.token_hex(4)}",
            secret_key=secrets.token_urlsafe(24),
            region="us-east-1",
            bucket=bucket,
        )
        self._env = {
            **os.environ,
            "S3_HOME_DIR": str(home),
            "S3_PORT": self.endpoint.endpoint_url.rsplit(":", 1)[1],
            "S3_BUCKET": bucket,
            "S3_REGION": self.endpoint.region,
            "S3_ACCESS_KEY": self.endpoint.access_key,
            "S3_SECRET_KEY": self.endpoint.secret_key,
            "S3_START_TIMEOUT_S": str(START_TIMEOUT_S - 30),
        }

    def build(self) -> None:
        """The cached binary, or a build of it (the first time only)."""
        try:
            done = self._run("build", timeout_s=BUILD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"building the S3 server (scripts/s3.sh build) took over {BUILD_TIMEOUT_S} s", pytrace=False)
        if done.returncode != 0:
            pytest.fail(f"could not build the S3 server (scripts/s3.sh build):\n{done.stderr}", pytrace=False)

    def start(self) -> None:
        self.build()
        try:
            done = self._run("up", timeout_s=START_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"S3 server start timed out\n--- server log ---\n{self.log_tail()}", pytrace=False)
        expected = f"export AWS_ENDPOINT_URL={self.endpoint.endpoint_url}"
        if done.returncode != 0 or expected not in done.stdout.splitlines():
            pytest.fail(
                f"S3 server failed to start (exit {done.returncode}):\n{done.stderr}\n"
                f"--- server log ---\n{self.log_tail()}",
                pytrace=False,
            )

    def stop(self) -> None:
        done = self._run("down", timeout_s=60)
        if done.returncode != 0:
            pytest.fail(f"S3 server did not stop: {done.stderr}", pytrace=False)

    def is_running(self) -> bool:
        return self._run("status", timeout_s=10).returncode == 0
