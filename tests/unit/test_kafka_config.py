"""KafkaBus configuration, without a broker: settings passed through, secrets kept out of
sight, kafka-python errors translated, and the fast checksum in use."""

from __future__ import annotations

import logging
from pathlib import Path

import kafka.errors as kerr
import kafka.record.util
import pytest

from gpuledger.settings import KafkaSettings
from streams.errors import BusConfigError, BusUnavailable
from streams.kafka import KafkaBus, client_config
from streams.kafka.connection import translate as _translate

pytestmark = pytest.mark.unit

SECRET = "s3cr3t-scram-password"


def scram() -> KafkaSettings:
    return KafkaSettings(
        bootstrap="kafka-1:9094, kafka-2:9094",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="collector",
        sasl_password=SECRET,
        ssl_cafile=Path("/etc/gpuledger/ca.pem"),
    )


def test_sasl_ssl_scram_settings_reach_kafka_python() -> None:
    config = client_config(scram())
    assert config["bootstrap_servers"] == ["kafka-1:9094", "kafka-2:9094"]
    assert config["security_protocol"] == "SASL_SSL"
    assert config["sasl_mechanism"] == "SCRAM-SHA-512"
    assert config["sasl_plain_username"] == "collector"
    assert config["sasl_plain_password"] == SECRET
    assert config["ssl_cafile"] == "/etc/gpuledger/ca.pem"
    assert config["api_version"] is None  # negotiated with the broker


def test_plaintext_settings_carry_no_credentials() -> None:
    config = client_config(KafkaSettings(bootstrap="127.0.0.1:9092"))
    assert not {k for k in config if k.startswith(("sasl", "ssl"))}


def test_the_password_is_not_in_reprs_nor_in_kafka_python_config_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = KafkaBus(scram())
    assert SECRET not in repr(bus)
    assert SECRET not in repr(bus.producer("gpu.usage.v1"))
    # kafka-python's admin client logs its configuration dict at DEBUG
    with caplog.at_level(logging.DEBUG, logger="kafka.admin.client"):
        logging.getLogger("kafka.admin.client").debug(
            "Starting KafkaAdminClient with configuration: %s", client_config(scram())
        )
    assert caplog.records and all(SECRET not in r.getMessage() for r in caplog.records)
    assert "**********" in caplog.records[0].getMessage()


def test_an_empty_bootstrap_is_a_configuration_error() -> None:
    with pytest.raises(BusConfigError, match="bootstrap"):
        KafkaBus(KafkaSettings(bootstrap=" , "))


@pytest.mark.parametrize(
    ("error", "ours"),
    [
        (kerr.KafkaTimeoutError("Unable to bootstrap"), BusUnavailable),
        (kerr.KafkaConnectionError("111 ECONNREFUSED"), BusUnavailable),
        (kerr.NotLeaderForPartitionError(), BusUnavailable),
        (kerr.SaslAuthenticationFailedError("bad password"), BusConfigError),
        (kerr.TopicAuthorizationFailedError(), BusConfigError),
        (kerr.MessageSizeTooLargeError(), BusConfigError),
        (kerr.InvalidReplicationFactorError(), BusConfigError),
    ],
)
def test_kafka_python_errors_are_translated_at_the_boundary(error: Exception, ours: type) -> None:
    translated = _translate(error, "doing something")
    assert type(translated) is ours
    assert "doing something" in str(translated)


def test_kafka_python_uses_the_c_crc32c() -> None:
    # without the crc32c package record checksums run in pure Python, 2-4x slower end to end
    assert kafka.record.util.crc32c_c is not None
