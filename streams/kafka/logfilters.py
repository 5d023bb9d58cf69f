"""Rewriting kafka-python's log records: secrets redacted, authentication failures remembered.

kafka-python logs its whole configuration at DEBUG (SASL password included), and reports a
refused SASL login only in its log (the call itself times out as "unable to bootstrap").
Filters are attached to kafka-python's own loggers when a bus is made, never at import.
"""

from __future__ import annotations

import logging
import re
import time


class RedactSecrets(logging.Filter):
    """Replaces registered secrets in kafka-python's log records with ``**********``.

    kafka-python's ``KafkaAdminClient`` logs its whole configuration at DEBUG, SASL password
    included (kafka/admin/client.py, "Starting KafkaAdminClient with configuration")."""

    secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(secret in message for secret in self.secrets):
            for secret in self.secrets:
                message = message.replace(secret, "**********")
            record.msg, record.args = message, ()
        return True


_REDACT = RedactSecrets()
#: kafka-python loggers known to print configuration (checked against 3.0.12).
_CONFIG_LOGGERS = ("kafka.admin.client", "kafka.producer.kafka", "kafka.consumer.group", "kafka.client_async")


def redact_in_logs(secret: str) -> None:
    RedactSecrets.secrets.add(secret)
    for name in _CONFIG_LOGGERS:
        logger = logging.getLogger(name)
        if _REDACT not in logger.filters:
            logger.addFilter(_REDACT)


class AuthFailures(logging.Filter):
    """Remembers the last SASL authentication failure kafka-python logged.

    kafka-python 3 retries a bootstrap that failed authentication until its timeout and then
    raises ``KafkaTimeoutError("Unable to bootstrap")``; the reason only reaches its log. A
    wrong password would read as "broker unreachable", and a collector would spool forever.
    """

    last: tuple[float, str] | None = None
    #: loggers whose level we lowered to WARNING to see the failure: their records are let
    #: through only where the application's own configuration would have let them through
    lowered: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "SaslAuthenticationFailed" in message or "AuthenticationFailedError" in message:
            reason = re.sub(r"\s*\(backoff [^)]*\)\s*$", "", message.split("SaslAuthenticationFailedError: ")[-1])
            type(self).last = (time.monotonic(), reason)
        if record.name in self.lowered:
            parent = logging.getLogger(record.name).parent
            return parent is None or record.levelno >= parent.getEffectiveLevel()
        return True


_AUTH_FAILURES = AuthFailures()
_AUTH_LOGGERS = ("kafka.net.manager", "kafka.net.connection", "kafka.conn", "kafka.client_async")
AUTH_WINDOW_S = 120.0


def watch_auth_failures() -> None:
    for name in _AUTH_LOGGERS:
        logger = logging.getLogger(name)
        if _AUTH_FAILURES not in logger.filters:
            logger.addFilter(_AUTH_FAILURES)
            if logger.level == logging.NOTSET and logger.getEffectiveLevel() > logging.WARNING:
                AuthFailures.lowered.add(name)
                logger.setLevel(logging.WARNING)
