"""The Kafka bus: makes producers and group members on one cluster (:class:`streams.bus.Bus`)."""

from __future__ import annotations

from collections.abc import Iterable

from streams.bus import DEFAULT_MAX_BATCH_BYTES, RevokeCallback
from streams.errors import BusConfigError
from streams.kafka.connection import KafkaSettings, client_config
from streams.kafka.logfilters import redact_in_logs, watch_auth_failures
from streams.kafka.member import KafkaConsumer
from streams.kafka.producer import KafkaProducer
from streams.kafka.socketfix import close_sockets_of_failed_connects
from streams.kafka.topics import create_missing_topics


class KafkaBus:
    """Producers and consumers on one Kafka cluster (see the module docstring).

    ``connect_timeout_s`` bounds how long a call waits for an unreachable broker before it
    raises :class:`BusUnavailable`. The settings' ``session_timeout_ms`` is how soon the group
    notices a consumer that died without leaving (a SIGKILLed process) or stopped answering (a
    frozen one) and hands its partitions on.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        client_id: str = "gpuledger",
        connect_timeout_s: float = 5.0,
        delivery_timeout_s: float = 60.0,
    ):
        close_sockets_of_failed_connects()
        if settings.sasl_mechanism is not None:
            watch_auth_failures()
        if settings.sasl_password is not None:
            redact_in_logs(settings.sasl_password.get_secret_value())
        if not client_config(settings)["bootstrap_servers"]:
            raise BusConfigError("Kafka bootstrap address is empty (GPULEDGER_KAFKA_BOOTSTRAP)")
        self.settings = settings
        self._sasl = settings.sasl_mechanism is not None
        self.client_id = client_id
        self.connect_timeout_s = connect_timeout_s
        self.session_timeout_s = settings.session_timeout_ms / 1000
        self.delivery_timeout_s = delivery_timeout_s
        self._known_topics: set[str] = set()

    def __repr__(self) -> str:
        s = self.settings
        return f"KafkaBus(bootstrap={s.bootstrap!r}, security_protocol={s.security_protocol!r})"

    # -- topics -------------------------------------------------------------------------

    def ensure_topics(self, topics: Iterable[str] | None = None) -> None:
        """Create the topics if missing (default: the usage and quarantine topics);
        see :func:`streams.kafka.topics.create_missing_topics`."""
        s = self.settings
        wanted = list(topics) if topics is not None else [s.usage_topic, s.quarantine_topic]
        missing = [t for t in wanted if t not in self._known_topics]
        if not missing:
            return
        create_missing_topics(
            s, missing, client_id=self.client_id, connect_timeout_s=self.connect_timeout_s, sasl=self._sasl
        )
        self._known_topics.update(missing)

    # -- the Bus protocol ---------------------------------------------------------------

    def producer(self, topic: str) -> KafkaProducer:
        """A producer for ``topic``; it connects (and creates the topic) on its first send."""
        return KafkaProducer(self, topic)

    def consumer(
        self,
        topic: str,
        group: str,
        on_revoke: RevokeCallback | None = None,
        max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
    ) -> KafkaConsumer:
        """A member of ``group`` reading ``topic``, from the earliest offset when none is
        committed (:class:`streams.kafka.member.KafkaConsumer`); it fetches about
        ``max_batch_bytes`` at a time, so what waits in its buffer is one batch's worth."""
        self.ensure_topics([topic])
        return KafkaConsumer(self, topic, group, on_revoke, fetch_bytes=max_batch_bytes)
