"""Usage event, schema version 1: the public wire contract (docs/architecture.md, Contracts).

One event is one device (a whole GPU or one MIG instance) over one aligned interval. The
same contract travels as JSON in Kafka messages (several events per message, one per line)
and as JSON Lines files (``gpuledger ingest FILE``).

Invariants this module holds:

* ``event_id`` is a pure function of ``node``, ``device_uuid`` and ``interval_start``
  (:func:`make_event_id`), so a re-sent interval always has the same id and dedupes.
* Timestamps are canonical RFC 3339 UTC with a ``Z`` and whole seconds: the string that is
  hashed into ``event_id`` is the string on the wire.
* The accounting unit is the GPU-microsecond: :func:`to_microseconds` turns the float
  ``gpu_seconds`` of an event into an integer once, at the edge, so every later sum is exact.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from collections.abc import Sequence
from typing import Any

SCHEMA_VERSION = 1
UNATTRIBUTED = "unattributed"
KST = timedelta(hours=9)  # Asia/Seoul: UTC+9, no daylight saving since 1988
TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
MICROSECONDS_PER_SECOND = 1_000_000
EVENT_ID_SEPARATOR = "\x1f"  # between node, device_uuid and interval_start in the hashed key

# Value ranges a consumer accepts (streams/README.md, "What a valid event is"). Each bound is
# the stored type's or the programme's: an event outside them is refused, never clamped.
PROGRAMME_START = datetime(2025, 1, 1, tzinfo=UTC)  # no usage of the programme is older
MAX_AHEAD = timedelta(days=1)  # how far past the consumer's clock a timestamp may lie
INT32_MAX = 2**31 - 1  # samples and expected_samples are int32 in raw/
MAX_TEXT_BYTES = 1024  # longest text field (site, node, ids, model, job_id, flags), in UTF-8 bytes


class Flag(StrEnum):
    """Quality flags an event may carry. Unknown flags are accepted and kept as they are."""

    PARTIAL_INTERVAL = "partial_interval"
    COUNTER_RESET = "counter_reset"
    GPU_LOST = "gpu_lost"
    NVML_ERROR = "nvml_error"
    UTILISATION_FALLBACK = "utilisation_fallback"
    SHARED_GPU = "shared_gpu"


class RefusalReason(StrEnum):
    """Why an input was refused. Stored in ``quarantine/`` beside the original bytes."""

    NOT_JSON = "not_json"
    NOT_AN_OBJECT = "not_an_object"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    BAD_SCHEMA_VERSION = "bad_schema_version"
    BAD_TIMESTAMP = "bad_timestamp"
    NO_TIMEZONE = "no_timezone"
    NOT_UTC = "not_utc"
    BAD_INTERVAL = "bad_interval"
    NOT_ALIGNED = "not_aligned"
    BAD_UUID = "bad_uuid"
    BAD_FRACTION = "bad_fraction"
    BAD_DURATION = "bad_duration"
    BAD_BUSY = "bad_busy"
    BAD_ENERGY = "bad_energy"
    BAD_SAMPLES = "bad_samples"
    BAD_EVENT_ID = "bad_event_id"
    EMPTY_FIELD = "empty_field"
    UNKNOWN_ENTITY = "unknown_entity"
    UNKNOWN_PROJECT = "unknown_project"
    PROJECT_OF_OTHER_ENTITY = "project_of_other_entity"
    BAD_ARROW_BATCH = "bad_arrow_batch"  # an Arrow IPC message that cannot be read as schema v1
    NOT_UTF8 = "not_utf8"  # the line's bytes are not UTF-8 (UTF-16, Latin-1, a cut multi-byte character)
    DUPLICATE_KEY = "duplicate_key"  # a JSON object names one key twice: which value counts is ambiguous
    BAD_TEXT = "bad_text"  # a text field with control characters, a lone surrogate, or over MAX_TEXT_BYTES
    UNKNOWN_GPU_MODEL = "unknown_gpu_model"  # no rate card of the registry has this exact model
    CONFLICTING_DUPLICATE = "conflicting_duplicate"  # an event_id stored before with other values


# field name -> (python types accepted, nullable). Order is the wire order.
FIELDS: dict[str, tuple[tuple[type, ...], bool]] = {
    "schema_version": ((int,), False),
    "event_id": ((str,), False),
    "site": ((str,), False),
    "node": ((str,), False),
    "gpu_uuid": ((str,), False),
    "device_uuid": ((str,), False),
    "gpu_model": ((str,), False),
    "mig_profile": ((str,), True),
    "gpu_fraction": ((float, int), False),
    "entity": ((str,), False),
    "project": ((str,), False),
    "job_id": ((str,), True),
    "interval_start": ((str,), False),
    "interval_end": ((str,), False),
    "gpu_seconds": ((float, int), False),
    "busy_gpu_seconds": ((float, int), False),
    "energy_joules": ((float, int), True),
    "samples": ((int,), False),
    "expected_samples": ((int,), False),
    "flags": ((list,), False),
}


def make_event_id(node: str, device_uuid: str, interval_start: str) -> str:
    """The deterministic id of one device's interval: 32 hex chars of SHA-256.

    The same ``(node, device_uuid, interval_start)`` always gives the same id, which is
    what lets the consumer drop a re-sent event instead of counting it twice.
    """
    digest = hashlib.sha256(f"{node}\x1f{device_uuid}\x1f{interval_start}".encode())
    return digest.hexdigest()[:32]


def event_ids_match(
    nodes: Sequence[str | None],
    device_uuids: Sequence[str | None],
    interval_starts: Sequence[str | None],
    event_ids: Sequence[str | None],
) -> list[bool]:
    """Column-wise check that each ``event_id`` is :func:`make_event_id` of its row.

    The consumer's hot loop: the same formula as :func:`make_event_id`, without a call per row.
    """
    sha = hashlib.sha256
    return [
        sha(f"{n}\x1f{d}\x1f{s}".encode()).hexdigest()[:32] == e
        for n, d, s, e in zip(nodes, device_uuids, interval_starts, event_ids, strict=True)
    ]


def format_timestamp(moment: datetime) -> str:
    """Canonical wire form of an instant: RFC 3339 UTC, whole seconds, ``Z``."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime: pass an aware UTC datetime")
    return moment.astimezone(UTC).strftime(TIMESTAMP_FORMAT)


def parse_timestamp(text: str) -> datetime:
    """Parse a canonical wire timestamp; raises ``ValueError`` on anything else."""
    return datetime.strptime(text, TIMESTAMP_FORMAT).replace(tzinfo=UTC)


def to_microseconds(seconds: float) -> int:
    """Seconds (float) to whole microseconds, rounded half to even, once, at the edge."""
    return round(seconds * MICROSECONDS_PER_SECOND)


@dataclasses.dataclass(frozen=True, slots=True)
class UsageEvent:
    """One device's usage over one aligned interval (schema version 1)."""

    event_id: str
    site: str
    node: str
    gpu_uuid: str
    device_uuid: str
    gpu_model: str
    mig_profile: str | None
    gpu_fraction: float
    entity: str
    project: str
    job_id: str | None
    interval_start: str
    interval_end: str
    gpu_seconds: float
    busy_gpu_seconds: float
    energy_joules: float | None
    samples: int
    expected_samples: int
    flags: tuple[str, ...] = ()
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        """The wire object, fields in contract order."""
        out = {name: getattr(self, name) for name in FIELDS}
        out["flags"] = list(self.flags)
        return out

    def to_json(self) -> str:
        """One JSON line (no trailing newline), compact, keys in contract order."""
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UsageEvent:
        """Build from a wire object that has already passed validation."""
        kwargs = {name: data[name] for name in FIELDS}
        kwargs["flags"] = tuple(data["flags"])
        return cls(**kwargs)
