"""Usage events on the wire: JSON Lines (the contract) and Arrow IPC batches (its extension).

Schema v1 travels as JSON Lines: one event per line, many lines per message. For bulk
traffic (``gpuledger ingest``, backfills, catch-up after an outage) the same events may travel
as one **Arrow IPC stream** per message: the columns and names of schema v1, the types of
:data:`ARROW_WIRE_SCHEMA`, timestamps as the same RFC 3339 strings (the string is what
``event_id`` hashes). A consumer tells them apart by the first four bytes: an IPC stream
starts with the continuation marker ``FF FF FF FF``, which no JSON text can start with.

The extension changes nothing for a JSON producer or reader of JSON: every event in an
Arrow batch goes through the same rules (``streams.validate.check_rules``), and a refused row
is kept in quarantine as the JSON line of its values, which ``quarantine replay`` re-admits
like any other line. A message that is not a readable IPC stream of the declared columns is
refused as a whole (``bad_arrow_batch``) and kept, base64 of the original bytes, with the
reason.

Collectors keep JSON: they send a node's few events per interval, and pyarrow would triple
the agent's memory (docs/architecture.md, Budgets and scale). Arrow pays off from about a thousand
events per message.
"""

from __future__ import annotations

import base64
import io

import pyarrow as pa
import pyarrow.ipc as ipc

from streams.schema import FIELDS

ARROW_MAGIC = b"\xff\xff\xff\xff"  # Arrow IPC stream continuation marker
ARROW_RAW_PREFIX = "arrow-ipc-base64:"  # how an unreadable Arrow message is kept in quarantine
BYTES_RAW_PREFIX = "bytes-base64:"  # how a refused line that is not UTF-8 text is kept in quarantine

# Schema v1's fields (streams.schema.FIELDS) as Arrow types, in wire order. Every column is
# nullable on the wire: a null where schema v1 forbids one is a row the rules refuse
# (``missing_field``), exactly as for a JSON line, not an unreadable message.
_ARROW_TYPES = {int: pa.int64(), str: pa.string(), float: pa.float64(), list: pa.list_(pa.string())}
ARROW_WIRE_SCHEMA = pa.schema(
    [pa.field(name, _ARROW_TYPES[types[0]]) for name, (types, _) in FIELDS.items()],
    metadata={"gpuledger.schema_version": "1"},
)


class ArrowBatchError(ValueError):
    """An Arrow message that is not an IPC stream of schema v1's columns; says what is wrong."""


def is_arrow(payload: bytes) -> bool:
    """``True`` for an Arrow IPC stream message, ``False`` for JSON Lines (or anything else)."""
    return payload[:4] == ARROW_MAGIC


def encode_arrow(table: pa.Table) -> bytes:
    """One message value: ``table`` (schema v1's columns) as an Arrow IPC stream.

    Columns are cast to :data:`ARROW_WIRE_SCHEMA` first, so a producer with ``large_string``
    or ``int32`` columns still sends the declared types. No IPC compression: the Kafka
    producer compresses the record batch (zstd) already.
    """
    missing = [name for name in ARROW_WIRE_SCHEMA.names if name not in table.column_names]
    if missing:
        raise ArrowBatchError(f"columns missing: {', '.join(missing)}")
    table = table.select(ARROW_WIRE_SCHEMA.names).cast(ARROW_WIRE_SCHEMA)
    sink = io.BytesIO()
    with ipc.new_stream(sink, ARROW_WIRE_SCHEMA) as writer:
        writer.write_table(table)
    return sink.getvalue()


def decode_arrow(payload: bytes) -> pa.Table:
    """The events of one Arrow message, with exactly :data:`ARROW_WIRE_SCHEMA`'s columns.

    Raises :class:`ArrowBatchError` naming every problem: not a readable stream, columns
    missing or unknown, a column whose type cannot be read as the declared one. Nulls in
    required columns are *not* an error here: they are rows, refused one by one by the rules
    (``missing_field``) like a JSON line with a null.
    """
    try:
        table = ipc.open_stream(pa.py_buffer(payload)).read_all()
        # IPC reading trusts offsets and bytes; a full validation refuses a batch whose
        # strings are not UTF-8 or whose offsets point outside its buffers before anything
        # downstream reads them
        table.validate(full=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
        raise ArrowBatchError(f"not a readable Arrow IPC stream: {exc}") from exc
    if table.schema.equals(ARROW_WIRE_SCHEMA):  # the common case (metadata is not compared)
        return table
    names = table.column_names
    problems = []
    missing = [name for name in ARROW_WIRE_SCHEMA.names if name not in names]
    if missing:
        problems.append(f"columns missing: {', '.join(missing)}")
    unknown = [name for name in names if name not in ARROW_WIRE_SCHEMA.names]
    if unknown:
        problems.append(f"columns not in schema v1: {', '.join(unknown)}")
    if len(set(names)) != len(names):
        problems.append("a column name appears twice")
    if problems:
        raise ArrowBatchError("; ".join(problems))
    columns = []
    for field in ARROW_WIRE_SCHEMA:
        column = table.column(field.name)
        if column.type != field.type:
            try:
                column = column.cast(field.type, safe=True)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                problems.append(f"{field.name} is {column.type}, expected {field.type}")
                continue
        columns.append(column)
    if problems:
        raise ArrowBatchError("; ".join(problems))
    return pa.Table.from_arrays(columns, schema=ARROW_WIRE_SCHEMA)


def raw_of_unreadable(payload: bytes) -> str:
    """How an Arrow message refused as a whole is kept in quarantine: its bytes, base64."""
    return ARROW_RAW_PREFIX + base64.b64encode(payload).decode("ascii")


def raw_of_line(line: bytes) -> str:
    """How a refused JSON line is kept in quarantine: its text, or, when the bytes are not
    UTF-8 (or the text starts like a kept binary), base64 of its bytes, so nothing is lost."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return BYTES_RAW_PREFIX + base64.b64encode(line).decode("ascii")
    if text.startswith((ARROW_RAW_PREFIX, BYTES_RAW_PREFIX)):
        return BYTES_RAW_PREFIX + base64.b64encode(line).decode("ascii")
    return text


def payload_of_raw(raw: str) -> bytes:
    """The original bytes of a quarantine ``raw`` (inverse of :func:`raw_of_unreadable` and
    :func:`raw_of_line`)."""
    for prefix in (ARROW_RAW_PREFIX, BYTES_RAW_PREFIX):
        if raw.startswith(prefix):
            return base64.b64decode(raw[len(prefix) :])
    return raw.encode()
