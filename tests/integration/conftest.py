"""A real Apache Kafka broker for the integration tier, started once per session.

The broker is the one ``make kafka-up`` gives (``scripts/kafka.sh``), here in a temporary
home with OS-assigned ports. A broker that does not start FAILS the tests that need it with
the tail of its log: these tests never skip.
"""

from __future__ import annotations

import os
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from script_server import ScriptServer, free_port  # tests/ is on sys.path (tests/conftest.py)

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "kafka.sh"


class KafkaBroker(ScriptServer):
    """A single-node broker in ``home``; ``stop()`` and ``start()`` keep its data."""

    script, log_name, what = SCRIPT, "broker.log", "broker"

    def __init__(self, home: Path):
        self.home = home
        port = free_port()
        controller_port = free_port()
        while controller_port == port:
            controller_port = free_port()
        sasl_port = free_port()
        while sasl_port in (port, controller_port):
            sasl_port = free_port()
        self.port = port
        self.bootstrap = f"127.0.0.1:{port}"
        # a second listener, SASL_PLAINTEXT with SCRAM-SHA-512, for the security tests
        self.sasl_bootstrap = f"127.0.0.1:{sasl_port}"
        self.scram_user, self.scram_password = "gpuledger", f"pw-{uuid.uuid4().hex}"
        self._env = {
            **os.environ,
            "KAFKA_HOME_DIR": str(home),
            "KAFKA_PORT": str(port),
            "KAFKA_CONTROLLER_PORT": str(controller_port),
            "KAFKA_HEAP_OPTS": "-Xmx512m -Xms128m",
            "KAFKA_START_TIMEOUT_S": "120",
            "KAFKA_SASL_PORT": str(sasl_port),
            "KAFKA_SCRAM_USER": self.scram_user,
            "KAFKA_SCRAM_PASSWORD": self.scram_password,
        }

    def start(self) -> None:
        try:
            done = self._run("up", timeout_s=300)
        except subprocess.TimeoutExpired:
            pytest.fail(f"Kafka broker start timed out\n{self.log_tail()}", pytrace=False)
        if done.returncode != 0 or done.stdout.strip() != self.bootstrap:
            pytest.fail(
                f"Kafka broker failed to start (exit {done.returncode}):\n{done.stdout}\n"
                f"{done.stderr}\n--- broker log ---\n{self.log_tail()}",
                pytrace=False,
            )

    def stop(self) -> None:
        done = self._run("down", timeout_s=60)
        if done.returncode != 0:
            pytest.fail(f"Kafka broker did not stop: {done.stderr}", pytrace=False)

    def is_running(self) -> bool:
        return self._run("status", timeout_s=10).returncode == 0


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    broker = KafkaBroker(tmp_path_factory.mktemp("kafka-broker"))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def kafka_bootstrap(kafka_broker: KafkaBroker) -> str:
    """The bootstrap address; restarts the shared broker if an earlier test left it down."""
    if not kafka_broker.is_running():
        kafka_broker.start()
    return kafka_broker.bootstrap


def _slug(request: pytest.FixtureRequest) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", request.node.name)[:60].strip("-")


@pytest.fixture
def kafka_topic(request: pytest.FixtureRequest) -> str:
    """A fresh topic name per test (the bus creates it)."""
    return f"test.{_slug(request)}.{uuid.uuid4().hex[:8]}"


@pytest.fixture
def kafka_group(request: pytest.FixtureRequest) -> str:
    """A fresh consumer group per test."""
    return f"group-{_slug(request)}-{uuid.uuid4().hex[:8]}"


# --- the S3-compatible server (SeaweedFS), started once per session: tests/s3_server.py ---

from s3_server import S3Endpoint, S3Server  # noqa: E402  (tests/ is on sys.path: tests/conftest.py)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = S3Server(tmp_path_factory.mktemp("s3-server"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3(s3_server: S3Server) -> S3Endpoint:
    """Endpoint, credentials and bucket; restarts the shared server if a test left it down."""
    if not s3_server.is_running():
        s3_server.start()
    return s3_server.endpoint


@pytest.fixture
def s3_prefix(request: pytest.FixtureRequest) -> str:
    """A fresh key prefix per test in the shared bucket."""
    return f"{_slug(request)}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def kcat() -> str:
    """The ``kcat`` binary (Debian package ``kcat``), the producer a third party would use.

    Missing under ``GPULEDGER_CI=1`` (``.ci/run`` installs it): the test fails; elsewhere it skips.
    """
    import shutil

    found = shutil.which("kcat") or shutil.which("kafkacat")
    if found is None:
        message = "kcat is not installed (apt-get install kcat)"
        if os.environ.get("GPULEDGER_CI"):
            pytest.fail(message + "; CI installs it in .ci/run, so its absence fails the run", pytrace=False)
        pytest.skip(message)
    return found
