"""Topic administration: create the usage and quarantine topics if missing, and read a
partition's log range (for the checks of storage's offsets against the log)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import kafka.errors as kerr
from kafka import KafkaAdminClient

from streams.kafka.connection import MAX_MESSAGE_BYTES, TOPIC_EXISTS, KafkaSettings, client_config, translate

log = logging.getLogger(__name__)


def admin_client(settings: KafkaSettings, client_id: str, connect_timeout_s: float) -> Any:
    """A kafka-python admin client (close it after use)."""
    return KafkaAdminClient(
        client_id=f"{client_id}-admin",
        bootstrap_timeout_ms=int(connect_timeout_s * 1000),
        request_timeout_ms=int(max(connect_timeout_s, 5.0) * 1000),
        **client_config(settings),
    )


def create_missing_topics(
    settings: KafkaSettings, topics: Iterable[str], *, client_id: str, connect_timeout_s: float, sasl: bool
) -> None:
    """Create those of ``topics`` that do not exist, with the partitions, replication factor
    and retention of the settings; a topic that exists is left as it is (its partitions are
    never changed here)."""
    missing = list(topics)
    admin = None
    try:
        admin = admin_client(settings, client_id, connect_timeout_s)
        existing = set(admin.list_topics())
        to_create = {
            name: {
                "num_partitions": settings.partitions,
                "replication_factor": settings.replication_factor,
                "configs": {
                    "retention.ms": str(settings.retention_ms),
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
                if code not in (0, TOPIC_EXISTS):
                    raise kerr.for_code(code)(topic.get("error_message") or topic["name"])
            admin.wait_for_topics(list(to_create), timeout_ms=int(connect_timeout_s * 1000))
            log.info("created Kafka topics %s", ", ".join(sorted(to_create)))
    except kerr.KafkaError as exc:
        raise translate(exc, f"creating topics {', '.join(missing)}", sasl=sasl) from exc
    finally:
        if admin is not None:
            admin.close()
