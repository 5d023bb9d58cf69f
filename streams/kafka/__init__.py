"""The bus on Apache Kafka, through kafka-python 3.x: only the modules of this package import it.

One module per job:

* :mod:`streams.kafka.bus` — :class:`KafkaBus`, which makes producers and group members and
  keeps the contract of :mod:`streams.bus`;
* :mod:`streams.kafka.producer` — :class:`KafkaProducer`: ``acks='all'``, idempotence, zstd,
  the node as key; connects lazily, on its first send;
* :mod:`streams.kafka.member` — :class:`KafkaConsumer`, the consumer-group member: auto-commit
  off, storage's offsets win on every assignment, records of revoked partitions never handed out;
* :mod:`streams.kafka.topics` — topic administration (create if missing, with the settings'
  partitions and retention);
* :mod:`streams.kafka.connection` — the settings read, kafka-python's connection
  configuration, and its errors translated into ours (:class:`~streams.errors.BusUnavailable`,
  :class:`~streams.errors.BusConfigError`);
* :mod:`streams.kafka.logfilters` — kafka-python's log records rewritten: secrets redacted,
  SASL failures remembered (they explain a bootstrap timeout);
* :mod:`streams.kafka.socketfix` — a fix to kafka-python's connect (sockets of failed connects
  closed), applied when the first bus is made, never at import.
"""

from streams.kafka.bus import KafkaBus
from streams.kafka.connection import MAX_MESSAGE_BYTES, KafkaSettings, client_config
from streams.kafka.member import KafkaConsumer
from streams.kafka.producer import KafkaProducer

__all__ = ["MAX_MESSAGE_BYTES", "KafkaBus", "KafkaConsumer", "KafkaProducer", "KafkaSettings", "client_config"]
