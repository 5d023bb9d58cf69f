"""Settings: file < environment < options; every mistake named at once; secrets hidden."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpuledger.settings import SettingsError, load_settings

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for name in list(__import__("os").environ):
        if name.startswith("GPULEDGER_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("GPULEDGER_CONFIG", "")  # no file; a named missing file is an error


def test_the_example_config_is_valid(monkeypatch) -> None:
    monkeypatch.setenv("GPULEDGER_CONFIG", str(REPO / "examples/gpuledger.toml"))
    settings = load_settings()
    assert settings.kafka.replication_factor == 3
    assert settings.collector.interval_s == 60


def test_environment_then_options_win(monkeypatch) -> None:
    monkeypatch.setenv("GPULEDGER_BUS", "kafka")
    monkeypatch.setenv("GPULEDGER_KAFKA_BOOTSTRAP", "broker:9093")
    monkeypatch.setenv("GPULEDGER_COLLECTOR__INTERVAL_S", "30")
    settings = load_settings(data_dir=Path("/srv/ledger"))
    assert (settings.bus, settings.kafka.bootstrap, settings.collector.interval_s) == ("kafka", "broker:9093", 30)
    assert settings.data_dir == Path("/srv/ledger")
    assert load_settings(bus="local").bus == "local"


def test_a_bad_config_names_every_mistake(tmp_path, monkeypatch) -> None:
    config = tmp_path / "gpuledger.toml"
    config.write_text('bus = "carrier-pigeon"\n[collector]\ninterval_s = 7\n[kafka]\npartitions = 0\n')
    monkeypatch.setenv("GPULEDGER_CONFIG", str(config))
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert "bus" in message and "collector" in message and "kafka.partitions" in message


def test_sasl_needs_credentials_and_hides_the_password(monkeypatch) -> None:
    monkeypatch.setenv("GPULEDGER_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    with pytest.raises(SettingsError, match="sasl_mechanism, sasl_username, sasl_password"):
        load_settings()
    monkeypatch.setenv("GPULEDGER_KAFKA__SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("GPULEDGER_KAFKA__SASL_USERNAME", "ledger")
    monkeypatch.setenv("GPULEDGER_KAFKA__SASL_PASSWORD", "hunter2")
    settings = load_settings()
    assert settings.kafka.sasl_password.get_secret_value() == "hunter2"
    assert "hunter2" not in repr(settings) and "hunter2" not in str(settings.model_dump())


def test_storage_settings_reach_the_store_and_hide_the_secret(monkeypatch) -> None:
    from storage.objectstore import parse_s3_root

    monkeypatch.setenv("GPULEDGER_STORAGE__ENDPOINT_URL", "http://127.0.0.1:8333")
    monkeypatch.setenv("GPULEDGER_STORAGE__SECRET_ACCESS_KEY", "s3cr3t-value")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "from-the-environment")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    settings = load_settings(data_dir=Path("s3://gpuledger/national"))
    options = settings.storage.s3_options()
    assert options == {"AWS_ENDPOINT_URL": "http://127.0.0.1:8333", "AWS_SECRET_ACCESS_KEY": "s3cr3t-value"}
    location = parse_s3_root("s3://gpuledger/national", options)
    assert (location.endpoint_url, location.access_key_id, location.url) == (
        "http://127.0.0.1:8333", "from-the-environment", "s3://gpuledger/national")
    assert "s3cr3t-value" not in repr(settings) and "s3cr3t-value" not in repr(location)
    assert location.delta_options()["AWS_ALLOW_HTTP"] == "true"
