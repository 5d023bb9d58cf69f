"""Talking to the brokers: the settings the Kafka modules read, kafka-python's connection
configuration, and kafka-python's errors translated into ours (they never leave this package).

A broker that cannot be reached becomes :class:`~streams.errors.BusUnavailable` (retryable:
the collector spools), wrong settings or refused credentials :class:`~streams.errors.BusConfigError`.
Secrets (the SASL password) go only into kafka-python's configuration; no ``repr``, log line or
error message here contains them.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

import kafka.errors as kerr

from streams.errors import BusConfigError, BusUnavailable, StreamError
from streams.kafka.logfilters import AUTH_WINDOW_S, AuthFailures


class _Secret(Protocol):
    def get_secret_value(self) -> str: ...


class KafkaSettings(Protocol):
    """What the bus reads of its settings (``gpuledger.settings.KafkaSettings`` has it all).

    A protocol rather than an import: settings live in the shell, and ``streams`` never
    imports ``gpuledger``.
    """

    bootstrap: str
    security_protocol: str
    sasl_mechanism: str | None
    sasl_username: str | None
    sasl_password: _Secret | None
    ssl_cafile: Any
    usage_topic: str
    quarantine_topic: str
    partitions: int
    replication_factor: int
    retention_ms: int
    consumer_group: str
    linger_ms: int
    max_poll_interval_ms: int
    session_timeout_ms: int


#: Largest message a producer may send, and the topics' ``max.message.bytes``. One message is
#: a node's batch (``DirectPublisher`` caps it at 5,000 events, about 2.5 MB of JSON before
#: zstd); the broker's 1 MiB default would refuse it.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
CONFIG_ERRORS = (
    kerr.AuthorizationError,
    kerr.SaslAuthenticationFailedError,
    kerr.KafkaConfigurationError,
    kerr.UnsupportedVersionError,
    kerr.MessageSizeTooLargeError,
    kerr.RecordListTooLargeError,
    kerr.InvalidTopicError,
    kerr.InvalidReplicationFactorError,
    kerr.InvalidPartitionsError,
    kerr.PolicyViolationError,
)
TOPIC_EXISTS = kerr.TopicAlreadyExistsError.errno
REBALANCE_ERRORS = (
    kerr.CommitFailedError,
    kerr.RebalanceInProgressError,
    kerr.IllegalGenerationError,
    kerr.UnknownMemberIdError,
)


def translate(exc: BaseException, doing: str, sasl: bool = False) -> StreamError:
    """A kafka-python error as ours: configuration problems apart, everything is retryable.

    ``sasl``: the client authenticates, so a recent authentication failure in kafka-python's
    log explains a bootstrap timeout (see :class:`~streams.kafka.logfilters.AuthFailures`)."""
    if isinstance(exc, CONFIG_ERRORS):
        return BusConfigError(f"Kafka refused {doing}: {exc}")
    if isinstance(exc, (ValueError, TypeError, AssertionError)):
        return BusConfigError(f"invalid Kafka settings while {doing}: {exc}")
    failure = AuthFailures.last
    if sasl and failure is not None and time.monotonic() - failure[0] < AUTH_WINDOW_S:
        return BusConfigError(
            f"Kafka refused the credentials while {doing}: {failure[1]}; "
            "check GPULEDGER_KAFKA__SASL_USERNAME, __SASL_PASSWORD and __SASL_MECHANISM"
        )
    return BusUnavailable(f"Kafka unavailable while {doing}: {exc}")


def client_config(settings: KafkaSettings) -> dict[str, Any]:
    """The connection part of kafka-python's configuration (holds the secret: never log it)."""
    config: dict[str, Any] = {
        "bootstrap_servers": [s.strip() for s in settings.bootstrap.split(",") if s.strip()],
        "security_protocol": settings.security_protocol,
        "api_version": None,  # auto: negotiate with the broker
        # kafka-python backs off up to 30 s between reconnects by default: a broker that
        # restarted would wait that long for its collectors. Cap it at a few seconds.
        "reconnect_backoff_max_ms": 5000,
    }
    if settings.sasl_mechanism is not None:
        config["sasl_mechanism"] = settings.sasl_mechanism
        config["sasl_plain_username"] = settings.sasl_username
        if settings.sasl_password is not None:
            config["sasl_plain_password"] = settings.sasl_password.get_secret_value()
    if settings.ssl_cafile is not None:
        config["ssl_cafile"] = str(settings.ssl_cafile)
    return config
