"""docker-compose.yml's S3 server: the same SeaweedFS release scripts/s3.sh builds, its data on a
volume, a health check, credentials from the environment. (`docker compose config` itself is
checked in test_kafka_compose.py.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def s3() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]["s3"]


def test_the_image_is_the_release_the_script_builds(s3: dict) -> None:
    script = (REPO / "scripts" / "s3.sh").read_text()
    release = re.search(r'^RELEASE="([0-9.]+)"', script, flags=re.MULTILINE).group(1)
    assert s3["image"] == f"chrislusf/seaweedfs:{release}"


def test_it_serves_s3_from_a_volume_and_reports_health(s3: dict) -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    command = s3["command"]
    assert command[0] == "mini"
    assert "-dir=/data" in command and "-s3.port=8333" in command
    assert any(flag.startswith("-bucket=") for flag in command)
    source, target = s3["volumes"][0].split(":")[:2]
    assert (source, target) == ("s3-data", "/data") and source in compose["volumes"]
    assert "http://127.0.0.1:8333/healthz" in s3["healthcheck"]["test"]
    assert s3["ports"] == ["127.0.0.1:8333:8333"]  # loopback only on the host


def test_credentials_come_from_the_environment(s3: dict) -> None:
    env = s3["environment"]
    assert re.fullmatch(r"\$\{S3_ACCESS_KEY:-[^}]+\}", env["AWS_ACCESS_KEY_ID"])
    assert re.fullmatch(r"\$\{S3_SECRET_KEY:-[^}]+\}", env["AWS_SECRET_ACCESS_KEY"])
