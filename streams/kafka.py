"""The bus on Apache Kafka, through kafka-python 3.x (the only module that imports it).

:class:`KafkaBus` makes producers and consumers that keep the contract of
:mod:`streams.bus`:

* producers send with ``acks='all'``, idempotence and zstd; the key is the node, so one
  node's messages stay in order in one partition; many events travel in one message;
* consumers read in a consumer group with auto-commit off: the position moves only through
  :meth:`KafkaConsumer.commit`, which the stream consumer calls after the Parquet write;
* the topics are created if missing, with the partitions and retention of
  :class:`~gpuledger.settings.KafkaSettings`;
* kafka-python's errors never leave this module: a broker that cannot be reached becomes
  :class:`~streams.errors.BusUnavailable` (retryable: the collector spools), wrong settings or
  refused credentials :class:`~streams.errors.BusConfigError`.

Secrets (the SASL password) go only into kafka-python's configuration; no ``repr``, log line
or error message here contains them.

A producer connects lazily, on its first send: a collector that starts while the broker is
down still starts, and spools (``collectors/spool.py``) until the broker is back.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

import kafka.errors as kerr
from kafka import KafkaAdminClient, KafkaConsumer as _KConsumer, KafkaProducer as _KProducer
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.structs import OffsetAndMetadata, TopicPartition

from streams.bus import BusRecord, RevokeCallback
from streams.errors import BusConfigError, BusUnavailable, StreamError

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

log = logging.getLogger(__name__)

#: Largest message a producer may send, and the topics' ``max.message.bytes``. One message is
#: a node's batch (``DirectPublisher`` caps it at 5,000 events, about 2.5 MB of JSON before
#: zstd); the broker's 1 MiB default would refuse it.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
_FIRST_POLL_RECORDS = 100
_BATCH_BYTES = 1024 * 1024
_CONFIG_ERRORS = (
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
_TOPIC_EXISTS = kerr.TopicAlreadyExistsError.errno
_REBALANCE_ERRORS = (
    kerr.CommitFailedError,
    kerr.RebalanceInProgressError,
    kerr.IllegalGenerationError,
    kerr.UnknownMemberIdError,
)


def _close_sockets_of_failed_connects() -> None:
    """Work around kafka-python 3.0.12: ``KafkaNetSocket.sock_connect`` (kafka/net/inet.py)
    raises on a refused or timed-out connect without closing the socket it made, so every
    reconnect attempt to a broker that is down leaves a socket for the garbage collector
    (and a ``ResourceWarning``, an error under the test suite's ``-W error``). Wrapped once,
    when the first :class:`KafkaBus` is made (nothing happens at import)."""
    from kafka.net.inet import KafkaNetSocket

    original = KafkaNetSocket.sock_connect
    if getattr(original, "_gpuledger_closes", False):
        return

    async def sock_connect(self, net, sock, sockaddr, timeout_at=None):  # type: ignore[no-untyped-def]
        try:
            return await original(self, net, sock, sockaddr, timeout_at=timeout_at)
        except BaseException:
            sock.close()
            raise

    sock_connect._gpuledger_closes = True  # type: ignore[attr-defined]
    KafkaNetSocket.sock_connect = sock_connect  # type: ignore[method-assign]


class _RedactSecrets(logging.Filter):
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


_REDACT = _RedactSecrets()
#: kafka-python loggers known to print configuration (checked against 3.0.12).
_CONFIG_LOGGERS = ("kafka.admin.client", "kafka.producer.kafka", "kafka.consumer.group", "kafka.client_async")


def _redact_in_logs(secret: str) -> None:
    _RedactSecrets.secrets.add(secret)
    for name in _CONFIG_LOGGERS:
        logger = logging.getLogger(name)
        if _REDACT not in logger.filters:
            logger.addFilter(_REDACT)


class _AuthFailures(logging.Filter):
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


_AUTH_FAILURES = _AuthFailures()
_AUTH_LOGGERS = ("kafka.net.manager", "kafka.net.connection", "kafka.conn", "kafka.client_async")
_AUTH_WINDOW_S = 120.0


def _watch_auth_failures() -> None:
    for name in _AUTH_LOGGERS:
        logger = logging.getLogger(name)
        if _AUTH_FAILURES not in logger.filters:
            logger.addFilter(_AUTH_FAILURES)
            if logger.level == logging.NOTSET and logger.getEffectiveLevel() > logging.WARNING:
                _AuthFailures.lowered.add(name)
                logger.setLevel(logging.WARNING)


def _translate(exc: BaseException, doing: str, sasl: bool = False) -> StreamError:
    """A kafka-python error as ours: configuration problems apart, everything is retryable.

    ``sasl``: the client authenticates, so a recent authentication failure in kafka-python's
    log explains a bootstrap timeout (see :class:`_AuthFailures`)."""
    if isinstance(exc, _CONFIG_ERRORS):
        return BusConfigError(f"Kafka refused {doing}: {exc}")
    if isinstance(exc, (ValueError, TypeError, AssertionError)):
        return BusConfigError(f"invalid Kafka settings while {doing}: {exc}")
    failure = _AuthFailures.last
    if sasl and failure is not None and time.monotonic() - failure[0] < _AUTH_WINDOW_S:
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


class KafkaBus:
    """Producers and consumers on one Kafka cluster (see the module docstring).

    ``connect_timeout_s`` bounds how long a call waits for an unreachable broker before it
    raises :class:`BusUnavailable`; ``session_timeout_s`` is how soon the group notices a
    consumer that died without leaving (a SIGKILLed process) and hands its partitions on.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        client_id: str = "gpuledger",
        connect_timeout_s: float = 5.0,
        session_timeout_s: float = 10.0,
        delivery_timeout_s: float = 60.0,
    ):
        _close_sockets_of_failed_connects()
        if settings.sasl_mechanism is not None:
            _watch_auth_failures()
        if settings.sasl_password is not None:
            _redact_in_logs(settings.sasl_password.get_secret_value())
        if not client_config(settings)["bootstrap_servers"]:
            raise BusConfigError("Kafka bootstrap address is empty (GPULEDGER_KAFKA_BOOTSTRAP)")
        self.settings = settings
        self._sasl = settings.sasl_mechanism is not None
        self.client_id = client_id
        self.connect_timeout_s = connect_timeout_s
        self.session_timeout_s = session_timeout_s
        self.delivery_timeout_s = delivery_timeout_s
        self._known_topics: set[str] = set()

    def __repr__(self) -> str:
        s = self.settings
        return f"KafkaBus(bootstrap={s.bootstrap!r}, security_protocol={s.security_protocol!r})"

    # -- topics -------------------------------------------------------------------------

    def ensure_topics(self, topics: Iterable[str] | None = None) -> None:
        """Create the topics if missing (default: the usage and quarantine topics).

        Partitions, replication factor and retention come from the settings; a topic that
        exists is left as it is (its partitions are never changed here).
        """
        s = self.settings
        wanted = list(topics) if topics is not None else [s.usage_topic, s.quarantine_topic]
        missing = [t for t in wanted if t not in self._known_topics]
        if not missing:
            return
        admin = None
        try:
            admin = KafkaAdminClient(
                client_id=f"{self.client_id}-admin",
                bootstrap_timeout_ms=int(self.connect_timeout_s * 1000),
                request_timeout_ms=int(max(self.connect_timeout_s, 5.0) * 1000),
                **client_config(s),
            )
            existing = set(admin.list_topics())
            to_create = {
                name: {
                    "num_partitions": s.partitions,
                    "replication_factor": s.replication_factor,
                    "configs": {
                        "retention.ms": str(s.retention_ms),
                        "max.message.bytes": str(MAX_MESSAGE_BYTES),
                    },
                }
                for name in missing
                if name not in existing
            }
            if to_create:
                result = admin.create_topics(to_create, raise_errors=False)
                for topic in result["topics"]:
                    code = topic["error_code"]
                    if code not in (0, _TOPIC_EXISTS):
                        raise kerr.for_code(code)(topic.get("error_message") or topic["name"])
                admin.wait_for_topics(list(to_create), timeout_ms=int(self.connect_timeout_s * 1000))
                log.info("created Kafka topics %s", ", ".join(sorted(to_create)))
        except kerr.KafkaError as exc:
            raise _translate(exc, f"creating topics {', '.join(missing)}", sasl=self._sasl) from exc
        finally:
            if admin is not None:
                admin.close()
        self._known_topics.update(missing)

    # -- the Bus protocol ---------------------------------------------------------------

    def producer(self, topic: str) -> KafkaProducer:
        """A producer for ``topic``; it connects (and creates the topic) on its first send."""
        return KafkaProducer(self, topic)

    def consumer(
        self, topic: str, group: str, on_revoke: RevokeCallback | None = None
    ) -> KafkaConsumer:
        """A consumer of ``topic`` in ``group``, from the earliest offset when none is committed."""
        self.ensure_topics([topic])
        return KafkaConsumer(self, topic, group, on_revoke)


_PRUNE_AT = 10_000  # pending messages before delivered ones are forgotten


class KafkaProducer:
    """:class:`streams.bus.Producer` on Kafka: ``acks='all'``, idempotent, zstd, key = node.

    :meth:`flush` checks the outcome of every message sent since the last flush: it returns
    only when each one is acknowledged by the broker, otherwise it raises, and the caller
    (the spool) keeps the messages and sends them again. Duplicates that this can create are
    harmless: every event carries its ``event_id`` and the consumer dedupes.
    """

    def __init__(self, bus: KafkaBus, topic: str):
        self._bus = bus
        self._sasl = bus._sasl
        self.topic = topic
        self._producer: _KProducer | None = None
        self._pending: list[Any] = []
        self._prune_at = _PRUNE_AT

    def __repr__(self) -> str:
        return f"KafkaProducer(topic={self.topic!r}, bus={self._bus!r})"

    def _client(self) -> _KProducer:
        if self._producer is None:
            bus, s = self._bus, self._bus.settings
            bus.ensure_topics([self.topic])
            try:
                self._producer = _KProducer(
                    client_id=f"{bus.client_id}-producer",
                    acks="all",
                    enable_idempotence=True,
                    compression_type="zstd",
                    linger_ms=s.linger_ms,
                    batch_size=_BATCH_BYTES,
                    max_request_size=MAX_MESSAGE_BYTES,
                    max_block_ms=int(bus.connect_timeout_s * 1000),
                    bootstrap_timeout_ms=int(bus.connect_timeout_s * 1000),
                    delivery_timeout_ms=int(bus.delivery_timeout_s * 1000),
                    request_timeout_ms=int(min(30.0, bus.delivery_timeout_s / 2) * 1000),
                    **client_config(s),
                )
            except kerr.KafkaError as exc:
                raise _translate(exc, f"connecting a producer for {self.topic}", sasl=self._sasl) from exc
            except (ValueError, TypeError, AssertionError) as exc:
                raise _translate(exc, f"configuring a producer for {self.topic}", sasl=self._sasl) from exc
        return self._producer

    def send(self, key: str, value: bytes) -> None:
        producer = self._client()
        try:
            self._pending.append(producer.send(self.topic, value=value, key=key.encode()))
        except kerr.KafkaError as exc:
            raise _translate(exc, f"sending to {self.topic}", sasl=self._sasl) from exc
        if len(self._pending) >= self._prune_at:
            self._prune()

    def _prune(self) -> None:
        """A long ingest: forget what was delivered, and stop at the first message that failed.

        Without the stop, a producer whose broker died goes on sending for as long as expired
        messages free buffer space, and reports nothing until the final flush. The threshold
        doubles with what stays open, so a slow broker costs amortised O(1) per send."""
        self._pending = [f for f in self._pending if not (f.is_done and f.succeeded())]
        failed = [f for f in self._pending if f.is_done and f.failed()]
        if failed:
            count = len(self._pending)
            self._pending = []
            raise _translate(
                failed[0].exception, f"delivering {len(failed)} of {count} pending messages to {self.topic}", sasl=self._sasl
            ) from failed[0].exception
        self._prune_at = max(_PRUNE_AT, 2 * len(self._pending))

    def flush(self, timeout_s: float | None = None) -> None:
        if self._producer is None or not self._pending:
            # Nothing sent since the last flush. Messages of a flush that failed may still sit
            # in kafka-python's buffer; their sender was told, and holds them (the spool).
            return
        pending, self._pending = self._pending, []
        if timeout_s is None:
            # Never wait without end: a broker that dies mid-send must end an ingest with an
            # error once every message's delivery timeout has passed.
            timeout_s = self._bus.delivery_timeout_s + self._bus.connect_timeout_s
        try:
            self._producer.flush(timeout=timeout_s)
        except kerr.KafkaError as exc:
            raise _translate(exc, f"flushing {len(pending)} messages to {self.topic}", sasl=self._sasl) from exc
        failures = [f.exception for f in pending if f.failed()]
        if failures:
            first = failures[0]
            err = _translate(first, f"delivering {len(failures)} of {len(pending)} messages to {self.topic}", sasl=self._sasl)
            raise err from first
        unfinished = sum(1 for f in pending if not f.is_done)
        if unfinished:  # flush returned early: treat as not delivered
            raise BusUnavailable(f"{unfinished} messages to {self.topic} not acknowledged in time")

    def close(self) -> None:
        """Flush and close; messages that cannot be delivered are dropped (the flush said so)."""
        if self._producer is not None:
            try:
                self.flush()
            finally:
                producer, self._producer = self._producer, None
                _close_producer(producer, self._bus.connect_timeout_s)


def _close_producer(producer: _KProducer, timeout_s: float) -> None:
    """Close a kafka-python producer even when its broker is gone.

    kafka-python's ``close`` flushes first and raises ``KafkaTimeoutError`` while messages are
    undelivered, leaving the producer open: its ``__del__`` then retries at interpreter exit and
    prints a traceback after our one-line error. Force it closed instead.
    """
    try:
        producer.close(timeout=timeout_s)
    except kerr.KafkaTimeoutError:
        sender = getattr(producer, "_sender", None)
        if sender is not None:
            sender.force_close()
        producer._closed = True  # noqa: SLF001 - see the docstring


class _RevokeListener(ConsumerRebalanceListener):
    def __init__(self, on_revoke: RevokeCallback | None, owner: KafkaConsumer | None = None):
        self._on_revoke = on_revoke
        self._owner = owner

    def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        partitions = sorted(tp.partition for tp in revoked)
        if partitions:
            log.info("partitions revoked: %s", partitions)
        if self._on_revoke is not None and partitions:
            self._on_revoke(partitions)

    def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        partitions = sorted(tp.partition for tp in assigned)
        log.info("partitions assigned: %s", partitions)
        if self._owner is not None and partitions:
            self._owner._resume(partitions)


class KafkaConsumer:
    """:class:`streams.bus.Consumer` on Kafka: a group member that commits only when told.

    Rebalances happen inside :meth:`poll_batch` (kafka-python's poll); the stream consumer
    writes and commits each batch before it polls again, so nothing unwritten is held when
    ``on_revoke`` is called, and the partition's next owner resumes at the last commit. A
    member whose batch step outlasts ``max_poll_interval_ms`` (or that stops heartbeating for
    the session timeout) loses its partitions mid-batch: its commit is then refused
    (:meth:`commit` returns ``False``) and the next owner reads the batch again.
    """

    lag_unit = "records"  # what :meth:`lag` counts

    def __init__(
        self,
        bus: KafkaBus,
        topic: str,
        group: str,
        on_revoke: RevokeCallback | None,
        max_batch_bytes: int = 64 * 1024 * 1024,
    ):
        self._bus = bus
        self._sasl = bus._sasl
        self.topic = topic
        self.group = group
        self.max_batch_bytes = max_batch_bytes
        s = bus.settings
        try:
            self._consumer = _KConsumer(
                client_id=f"{bus.client_id}-consumer",
                group_id=group,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                max_partition_fetch_bytes=MAX_MESSAGE_BYTES,
                fetch_max_bytes=64 * 1024 * 1024,
                session_timeout_ms=int(bus.session_timeout_s * 1000),
                heartbeat_interval_ms=int(max(1.0, bus.session_timeout_s / 4) * 1000),
                # the longest a batch step (write + commit) may take before the group evicts
                # this member and hands its partitions on (kafka-python's default is 5 min)
                max_poll_interval_ms=s.max_poll_interval_ms,
                bootstrap_timeout_ms=int(bus.connect_timeout_s * 1000),
                **client_config(s),
            )
            self._on_assign: Callable[[list[int]], Mapping[int, int]] | None = None
            self._consumer.subscribe([topic], listener=_RevokeListener(on_revoke, self))
            # Fetch metadata after subscribing and before joining. Without it kafka-python
            # joins with no partition metadata (the member gets no partitions), or assigns
            # against a stale snapshot and rebalances again at the next metadata refresh,
            # in the middle of the first batch.
            self._consumer.topics()
        except kerr.KafkaError as exc:
            raise _translate(exc, f"connecting a consumer of {topic} in group {group}", sasl=self._sasl) from exc
        except (ValueError, TypeError, AssertionError) as exc:
            raise _translate(exc, f"configuring a consumer of {topic}", sasl=self._sasl) from exc
        self._joined = False

    def __repr__(self) -> str:
        return f"KafkaConsumer(topic={self.topic!r}, group={self.group!r}, bus={self._bus!r})"

    def on_assign(self, resume: Callable[[list[int]], Mapping[int, int]]) -> None:
        """Call ``resume(partitions)`` whenever partitions are assigned; it returns, per
        partition, the next offset storage does not hold yet, and the member seeks there (past
        a lost commit, or another member's work the group never heard of)."""
        self._on_assign = resume

    def _resume(self, partitions: list[int]) -> None:
        if self._on_assign is None:
            return
        # runs on kafka-python's IO thread: seek only sets the position (no network call);
        # storage is never behind the group's commit (the loop commits after storing)
        for partition, offset in sorted(self._on_assign(partitions).items()):
            log.info("partition %d: resuming at offset %d, the first one storage does not hold", partition, offset)
            self._consumer.seek(TopicPartition(self.topic, partition), offset)

    def _poll(self, timeout_s: float, max_records: int) -> list[BusRecord]:
        try:
            polled = self._consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        except kerr.KafkaError as exc:
            raise _translate(exc, f"polling {self.topic}", sasl=self._sasl) from exc
        out: list[BusRecord] = []
        for tp in sorted(polled, key=lambda tp: tp.partition):
            out.extend(
                BusRecord(r.topic, r.partition, r.offset, r.key, r.value) for r in polled[tp]
            )
        return out

    def _wait_for_assignment(self, timeout_s: float) -> list[BusRecord]:
        """The first poll joins the group; wait for it so that ``--until-idle`` does not read
        "no records yet" as "idle". Bounded: a member with no partitions goes on after it."""
        deadline = time.monotonic() + max(timeout_s, self._bus.session_timeout_s * 3)
        while time.monotonic() < deadline:
            records = self._poll(0.1, 1)
            if records or self._consumer.assignment():
                self._joined = True
                if not records:
                    self._resolve_positions(deadline)
                return records
        self._joined = True
        return []

    def _resolve_positions(self, deadline: float) -> None:
        """Look up where each assigned partition resumes (committed offset, or earliest) now,
        so that the next poll fetches at once instead of spending its timeout on it."""
        try:
            for tp in self._consumer.assignment():
                left_ms = int((deadline - time.monotonic()) * 1000)
                if left_ms <= 0:
                    return
                self._consumer.position(tp, timeout_ms=left_ms)
        except kerr.IllegalStateError:
            return  # a rebalance took the partition meanwhile: the next poll sorts it out
        except kerr.KafkaError as exc:
            raise _translate(exc, f"looking up the positions of {self.topic}", sasl=self._sasl) from exc

    def poll_batch(self, max_records: int, timeout_s: float) -> list[BusRecord]:
        """Up to ``max_records`` records: waits up to ``timeout_s`` for the first, then takes
        whatever else is already fetched, so batches are large when the topic has a backlog.
        A batch also stops growing past ``max_batch_bytes`` of values (memory stays bounded
        when messages carry thousands of events each)."""
        records: list[BusRecord] = []
        if not self._joined:
            records = self._wait_for_assignment(timeout_s)
        if not records:
            # a first poll of a few records: kafka-python hands out everything it has fetched
            # (hundreds of MB of Arrow batches on a backlog), the loop below stops at the cap
            records = self._poll(timeout_s, min(max_records, _FIRST_POLL_RECORDS))
        size = sum(len(r.value) for r in records)
        while records and len(records) < max_records and size < self.max_batch_bytes:
            room = (self.max_batch_bytes - size) * len(records) // max(size, 1)  # records that fit
            more = self._poll(0.0, max(1, min(max_records - len(records), 1000, room)))
            if not more:
                break
            records.extend(more)
            size += sum(len(r.value) for r in more)
        return records

    def caught_up(self) -> bool:
        assigned = list(self._consumer.assignment())
        if not assigned:
            return True
        try:
            ends = self._consumer.end_offsets(assigned)
            return all(self._consumer.position(tp) >= ends[tp] for tp in assigned)
        except kerr.IllegalStateError:
            return False  # a rebalance took a partition meanwhile: poll again
        except kerr.KafkaError as exc:
            raise _translate(exc, f"looking up the end offsets of {self.topic}", sasl=self._sasl) from exc

    def commit(self, next_offsets: Mapping[int, int]) -> bool:
        """Commit; ``False`` when the group refused it because it rebalanced meanwhile (the
        batch is read again and deduplicated), ``True`` when committed. Other failures raise."""
        if not next_offsets:
            return True
        offsets = {
            TopicPartition(self.topic, partition): OffsetAndMetadata(offset, "", -1)
            for partition, offset in next_offsets.items()
        }
        deadline = time.monotonic() + self._bus.delivery_timeout_s
        while True:
            try:
                self._consumer.commit(offsets=offsets)
                return True
            except _REBALANCE_ERRORS as exc:
                # The group moved on while the batch was being written: these partitions'
                # next owner (maybe this member again) resumes at the last commit. The batch
                # is already in Parquet, so its records come again and are deduplicated.
                log.warning(
                    "offsets of %s not committed, the group rebalanced meanwhile (%s); "
                    "the batch will be read again and deduplicated", self.topic, exc,
                )
                return False
            except kerr.KafkaError as exc:
                if exc.retriable and time.monotonic() < deadline:
                    time.sleep(0.5)  # coordinator moving or restarting: try again
                    continue
                raise _translate(exc, f"committing offsets of {self.topic}", sasl=self._sasl) from exc

    def lag(self) -> dict[int, int]:
        """Per assigned partition, records between the position and the end of the log (the
        end offsets are one request to the broker: ask every few seconds, not per record)."""
        assigned = list(self._consumer.assignment())
        if not assigned:
            return {}
        timeout_ms = int(self._bus.connect_timeout_s * 1000)
        try:
            ends = self._consumer.end_offsets(assigned, timeout_ms=timeout_ms)
            positions = {tp: self._consumer.position(tp, timeout_ms=timeout_ms) for tp in assigned}
        except kerr.IllegalStateError:
            return {}  # a rebalance took a partition meanwhile: the next look sees the new set
        except kerr.KafkaError as exc:
            raise _translate(exc, f"looking up the lag of {self.topic}", sasl=self._sasl) from exc
        # a position not resolved yet (just assigned) is left out rather than guessed
        return {tp.partition: max(0, ends[tp] - at) for tp, at in positions.items() if at is not None}

    def assigned_partitions(self) -> Sequence[int]:
        """The partitions this member holds now (for diagnostics and tests)."""
        return sorted(tp.partition for tp in self._consumer.assignment())

    def close(self) -> None:
        try:
            self._consumer.close(autocommit=False)
        except kerr.KafkaError as exc:  # leaving the group failed: the session times out
            log.warning("closing the consumer of %s: %s", self.topic, exc)
