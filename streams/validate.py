"""Decoding and validating usage events: one decoder for JSON, one set of rules for every row.

A line's verdict depends on that line alone, never on the other lines of its message, the
message's wire format or where it sits in a batch (``tests/unit/test_hostile_corpus.py``
holds the code to this with a property test):

* **JSON Lines** are decoded line by line by one strict decoder (:func:`decode_line`): the
  bytes must be UTF-8, the line one RFC 8259 JSON object with no key named twice (at any
  depth), each field of schema v1 of its JSON type (a string is a string: ``job_id: 123`` is
  ``wrong_type``, not ``"123"``), integers within 64 bits and strings encodable as UTF-8.
  Whatever the decoder cannot turn into a typed row is refused here, with a reason code.
  ``NaN``, ``Infinity`` and numbers too large for a float are read as the floats they name,
  and the rules refuse them by field (``bad_energy`` …), the same verdict an Arrow batch
  carrying that float gets. Lines holding only JSON whitespace are not events and are skipped.
* **Arrow IPC** messages (``streams.wire``) are typed already; a message that is not a valid
  stream of schema v1's columns is refused whole (``bad_arrow_batch``).
* :func:`check_rules` holds every semantic rule of schema v1 once, as Polars expressions, for
  rows from both wire formats, and returns the first rule each row breaks (``reason_code``)
  with a sentence naming the value (``reason``). Registry checks (entity, project, GPU model)
  take an :class:`Accounts` so that ``streams`` never imports ``accounting``; so does the
  clock, which bounds timestamps from above.

Decoding never raises for what a message holds: anything it cannot read becomes a refusal.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import polars as pl
import pyarrow as pa

from streams.schema import (
    EVENT_ID_SEPARATOR,
    FIELDS,
    INT32_MAX,
    MAX_AHEAD,
    MAX_TEXT_BYTES,
    PROGRAMME_START,
    SCHEMA_VERSION,
    UNATTRIBUTED,
    RefusalReason,
    event_ids_match,
)
from streams.wire import ARROW_WIRE_SCHEMA, ArrowBatchError, decode_arrow, is_arrow, raw_of_line, raw_of_unreadable

# schema v1 as Polars types, from the same declaration as the Arrow wire schema
WIRE_SCHEMA: dict[str, pl.DataType] = dict(pl.from_arrow(ARROW_WIRE_SCHEMA.empty_table()).schema)

EPSILON_SECONDS = 1e-6  # float slack when comparing seconds
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_JSON_WHITESPACE = b" \t\r"  # with "\n", which splits lines; nothing else is blank


def utc_now() -> datetime:
    """The real clock: the default of :attr:`Accounts.clock`."""
    return datetime.now(UTC)


@dataclasses.dataclass(frozen=True, slots=True)
class Accounts:
    """What validation needs from outside ``streams``: the registry's names and a clock.

    ``entities`` and ``project_entity`` say who may be billed. ``gpu_models`` are the models
    some rate card of the registry prices; ``None`` (only for tests of other rules) accepts
    every model, and :func:`gpuledger.wiring.accounts_of` always fills it, because a model no
    card prices would make the month's close refuse to bill. ``clock`` gives the consumer's
    "now" (aware, UTC): a timestamp more than :data:`~streams.schema.MAX_AHEAD` past it is
    refused.
    """

    entities: frozenset[str]
    project_entity: Mapping[str, str]
    gpu_models: frozenset[str] | None = None
    clock: Callable[[], datetime] = utc_now


@dataclasses.dataclass(frozen=True, slots=True)
class Refused:
    """An input refused before it became a typed row (not JSON, wrong type …)."""

    source: str
    raw: str
    reason_code: RefusalReason
    reason: str


def line_id(raw: str) -> str:
    """Identity of a refused line: re-sending the same bytes is kept once in quarantine."""
    return hashlib.sha256(raw.encode("utf-8", "replace")).hexdigest()[:32]


def decode_messages(
    messages: Sequence[tuple[str, bytes]],
) -> tuple[pl.DataFrame, list[Refused]]:
    """Decode ``(source, payload)`` messages (JSON Lines or Arrow IPC, see ``streams.wire``)
    into one typed frame plus early refusals. Never raises for what a payload holds.

    The frame has the wire columns plus ``_source`` (``<message source>#<line or row>``) and
    ``_raw`` (the line's text for JSON rows; null for Arrow rows, whose refused rows are kept
    as the JSON line of their values).
    """
    frames: list[pl.DataFrame] = []
    refused: list[Refused] = []
    json_run: list[tuple[str, bytes]] = []
    arrow_run: list[tuple[str, pa.Table]] = []

    def flush() -> None:
        if json_run:
            frame, bad = _decode_json_guarded(json_run)
            frames.append(frame)
            refused.extend(bad)
            json_run.clear()
        if arrow_run:
            frames.append(_arrow_frame(arrow_run))
            arrow_run.clear()

    for source, payload in messages:
        if not is_arrow(payload):
            if arrow_run:
                flush()
            json_run.append((source, payload))
            continue
        if json_run:
            flush()
        try:
            arrow_run.append((source, decode_arrow(payload)))
        except ArrowBatchError as exc:
            refused.append(
                Refused(source, raw_of_unreadable(payload), RefusalReason.BAD_ARROW_BATCH, f"Arrow batch refused: {exc}")
            )
    flush()
    frames = [f for f in frames if f.height]
    if not frames:
        return _empty(), refused
    return pl.concat(frames, how="vertical"), refused


def _arrow_frame(tables: Sequence[tuple[str, pa.Table]]) -> pl.DataFrame:
    """Decoded Arrow messages as one frame, ``_source`` = ``<message source>#<row>``."""
    # one chunk per column: Polars converts chunk by chunk, and a chunk per message costs 3×
    frame = pl.from_arrow(pa.concat_tables([table for _, table in tables]).combine_chunks())
    assert isinstance(frame, pl.DataFrame)
    message = pl.Series("_message", [s for s, _ in tables]).repeat_by(
        pl.Series([t.num_rows for _, t in tables], dtype=pl.UInt32())
    ).explode()
    return frame.with_columns(message).with_columns(
        _source=pl.format("{}#{}", pl.col("_message"), pl.int_range(1, pl.len() + 1).over("_message")),
        _raw=pl.lit(None, dtype=pl.String()),
    ).drop("_message")


def _empty() -> pl.DataFrame:
    schema = dict(WIRE_SCHEMA) | {"_source": pl.String(), "_raw": pl.String()}
    return pl.DataFrame(schema=schema)


# --- JSON Lines: one strict decoder -------------------------------------------------------


class _DuplicateKey(Exception):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return obj


_STRICT_JSON = json.JSONDecoder(object_pairs_hook=_unique_object)
_NONE = type(None)
# per wire column: the Python types json gives for a well-typed value (None: a null)
_ACCEPTED: dict[str, frozenset[type]] = {
    name: frozenset((_NONE, *(() if types[0] is not float else (int,)), types[0]))
    for name, (types, _) in FIELDS.items()
}
_INT_COLUMNS = [name for name, (types, _) in FIELDS.items() if types[0] is int]
_FLOAT_COLUMNS = [name for name, (types, _) in FIELDS.items() if types[0] is float]
_TEXT_COLUMNS = [name for name, (types, _) in FIELDS.items() if types[0] is str]
# an integer that does not fit 64 bits is refused by the range rule of its field
_INT_RANGE_REASON = {
    "schema_version": RefusalReason.BAD_SCHEMA_VERSION,
    "samples": RefusalReason.BAD_SAMPLES,
    "expected_samples": RefusalReason.BAD_SAMPLES,
}


def decode_line(line: bytes) -> dict[str, Any] | tuple[RefusalReason, str]:
    """One JSON line as the object it holds, or ``(reason code, sentence)`` when the strict
    decoder cannot read it as a JSON object: not UTF-8, not JSON (nested past Python's
    recursion limit included), a key named twice, not an object. Field types are checked by
    :func:`decode_json_lines`."""
    return _decode_line(line)[0]


def _decode_line(line: bytes) -> tuple[dict[str, Any] | tuple[RefusalReason, str], str]:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return (RefusalReason.NOT_UTF8, f"not UTF-8: byte {exc.start} is 0x{line[exc.start]:02x}; send UTF-8 JSON"), ""
    if text.startswith("\ufeff"):
        return (RefusalReason.NOT_JSON, "not JSON: the line starts with a byte order mark; send UTF-8 without one"), text
    try:
        obj = _STRICT_JSON.decode(text)
    except _DuplicateKey as exc:
        why = f"key {exc.key!r} appears twice in one object: which value counts is ambiguous"
        return (RefusalReason.DUPLICATE_KEY, why), text
    except RecursionError:
        return (RefusalReason.NOT_JSON, "not JSON this decoder reads: nested too deeply"), text
    except ValueError as exc:
        return (RefusalReason.NOT_JSON, f"not JSON: {exc}"), text
    if not isinstance(obj, dict):
        return (RefusalReason.NOT_AN_OBJECT, "a usage event must be a JSON object"), text
    return obj, text


def decode_json_lines(
    lines: Sequence[bytes],
) -> tuple[pa.Table, list[int], list[tuple[int, RefusalReason, str]]]:
    """Non-blank JSON lines as one Arrow table of :data:`~streams.wire.ARROW_WIRE_SCHEMA`
    (plus ``_raw``, the line's text) and the refusals.

    Returns ``(table, kept, refused)``: ``kept[i]`` is the index in ``lines`` of table row
    ``i``; ``refused`` holds ``(index, code, sentence)``. Each line is judged alone: its
    verdict is the same whatever lines surround it. The checks run column-wise and fall back
    to row by row only for a column that fails them.
    """
    problems: dict[int, tuple[RefusalReason, list[str]]] = {}
    objects: list[dict[str, Any]] = []
    texts: list[str] = []
    kept: list[int] = []
    for index, line in enumerate(lines):
        obj, text = _decode_line(line)
        if isinstance(obj, tuple):
            problems[index] = (obj[0], [obj[1]])
            continue
        objects.append(obj)
        texts.append(text)
        kept.append(index)
    bad_rows: dict[int, tuple[RefusalReason, list[str]]] = {}

    def refuse(row: int, code: RefusalReason, what: str) -> None:
        bad_rows.setdefault(row, (code, []))[1].append(what)

    arrays = []
    for name, field in zip(FIELDS, ARROW_WIRE_SCHEMA, strict=True):
        values = [obj.get(name) for obj in objects]
        kinds = set(map(type, values))
        if not kinds <= _ACCEPTED[name]:
            for row, value in enumerate(values):
                if type(value) not in _ACCEPTED[name]:
                    refuse(row, RefusalReason.WRONG_TYPE, f"{name} is {type(value).__name__}")
                    values[row] = None
        if name == "flags" and any(values):
            for row, value in enumerate(values):
                if value and not all(type(f) is str for f in value):
                    refuse(row, RefusalReason.WRONG_TYPE, "flags must be strings")
                    values[row] = None
        if name in _FLOAT_COLUMNS and int in kinds:  # JSON 60 for 60.0; beyond a float: ±inf
            values = [_as_float(v) if type(v) is int else v for v in values]
        arrays.append(_column(name, values, field.type, refuse))
    arrays.append(pa.array(texts, type=pa.string()))
    table = pa.Table.from_arrays(arrays, names=[*FIELDS, "_raw"])
    for row, (code, what) in bad_rows.items():
        problems[kept[row]] = (code, what)
    if bad_rows:
        table = table.filter(pa.array([row not in bad_rows for row in range(len(kept))]))
        kept = [index for row, index in enumerate(kept) if row not in bad_rows]
    refusals = [(index, code, _sentence(code, what)) for index, (code, what) in sorted(problems.items())]
    return table, kept, refusals


def _as_float(value: int) -> float:
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def _column(name: str, values: list[Any], arrow_type: pa.DataType, refuse: Callable[[int, RefusalReason, str], None]) -> pa.Array:
    """``values`` as an Arrow array; a value the type cannot hold (an integer beyond 64 bits, a
    string with a lone surrogate) is refused, its row nulled, and the rest converted."""
    try:
        return pa.array(values, type=arrow_type)
    except (OverflowError, UnicodeEncodeError, pa.ArrowException):
        pass
    for row, value in enumerate(values):
        if type(value) is int and not _INT64_MIN <= value <= _INT64_MAX:
            refuse(row, _INT_RANGE_REASON[name], f"{name} {value} does not fit a 64-bit integer")
            values[row] = None
        elif not _encodable(value):
            refuse(row, RefusalReason.BAD_TEXT, f"{name} holds a lone surrogate, which UTF-8 cannot encode")
            values[row] = None
    return pa.array(values, type=arrow_type)


def _encodable(value: object) -> bool:
    """A string (or each string of a list) encodes as UTF-8: no lone surrogate, which a JSON
    ``\\ud800`` escape can make."""
    for text in value if type(value) is list else (value,):
        if type(text) is str and not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                return False
    return True


def _sentence(code: RefusalReason, what: list[str]) -> str:
    if code == RefusalReason.WRONG_TYPE:
        return "wrong type: " + "; ".join(what)
    return "; ".join(what)


def _decode_json_guarded(messages: Sequence[tuple[str, bytes]]) -> tuple[pl.DataFrame, list[Refused]]:
    """:func:`_decode_json`, message by message if the run fails unexpectedly; a message that
    still cannot be decoded is refused whole, never a raised batch."""
    try:
        return _decode_json(messages)
    except Exception as exc:  # noqa: BLE001 - a decoder bug must not stop the stream
        if len(messages) == 1:
            source, payload = messages[0]
            why = f"message not decodable ({type(exc).__name__}: {exc})"[:500]
            return _empty(), [Refused(source, raw_of_line(payload), RefusalReason.NOT_JSON, why)]
    frames: list[pl.DataFrame] = []
    refused: list[Refused] = []
    for message in messages:
        frame, bad = _decode_json_guarded([message])
        frames.append(frame)
        refused.extend(bad)
    return pl.concat(frames, how="vertical"), refused


def _decode_json(messages: Sequence[tuple[str, bytes]]) -> tuple[pl.DataFrame, list[Refused]]:
    lines: list[bytes] = []
    sources: list[str] = []
    numbers: list[int] = []
    for source, payload in messages:
        for number, line in enumerate(payload.split(b"\n"), start=1):
            if line.strip(_JSON_WHITESPACE):
                lines.append(line)
                sources.append(source)
                numbers.append(number)
    table, kept, bad = decode_json_lines(lines)
    refused = [Refused(f"{sources[i]}#{numbers[i]}", raw_of_line(lines[i]), code, why) for i, code, why in bad]
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    frame = frame.with_columns(
        _source=pl.format(
            "{}#{}",
            pl.Series([sources[i] for i in kept], dtype=pl.String()),
            pl.Series([numbers[i] for i in kept], dtype=pl.Int64()),
        )
    ).select(*FIELDS, "_source", "_raw")
    return frame, refused


# Timestamps: canonical RFC 3339 UTC only, ``YYYY-MM-DDTHH:MM:SSZ``: upper-case T and Z, whole
# seconds (the string is hashed into event_id, so two spellings of one instant would be two
# events), seconds 00-59 (a leap second :60 would be the next minute under its own id).
_TS_PATTERN = r"^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])T([01]\d|2[0-3]):[0-5]\d:[0-5]\dZ$"
_NAIVE_PATTERN = r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?$"
_OFFSET_PATTERN = r"[+-]\d{2}:?\d{2}$"
_CONTROL = [chr(c) for c in (*range(0x20), 0x7F)]  # C0 controls and DEL, refused in text fields
_TEXT_FIELDS = ("site", "node", "gpu_uuid", "device_uuid", "gpu_model", "mig_profile", "entity", "project", "job_id")

Rule = tuple[pl.Expr, RefusalReason, pl.Expr]


def _ts_rules(column: str, now: datetime) -> list[Rule]:
    text = pl.col(column)
    parsed = pl.col(f"_{column}")
    latest = now + MAX_AHEAD
    return [
        (
            text.str.contains(_NAIVE_PATTERN),
            RefusalReason.NO_TIMEZONE,
            pl.format(f"{column} {{}} has no timezone; send RFC 3339 UTC like 2026-11-01T00:00:00Z", text),
        ),
        (
            text.str.contains(_OFFSET_PATTERN),
            RefusalReason.NOT_UTC,
            pl.format(f"{column} {{}} is not UTC; send it with a Z (2026-11-01T00:00:00Z)", text),
        ),
        (
            parsed.is_null(),
            RefusalReason.BAD_TIMESTAMP,
            pl.format(f"{column} {{}} is not a canonical RFC 3339 UTC timestamp (YYYY-MM-DDTHH:MM:SSZ, seconds 00-59)", text),
        ),
        (
            parsed < pl.lit(PROGRAMME_START, dtype=pl.Datetime("us", "UTC")),
            RefusalReason.BAD_TIMESTAMP,
            pl.format(f"{column} {{}} is before the programme's start ({PROGRAMME_START:%Y-%m-%dT%H:%M:%SZ})", text),
        ),
        (
            parsed > pl.lit(latest, dtype=pl.Datetime("us", "UTC")),
            RefusalReason.BAD_TIMESTAMP,
            pl.format(
                f"{column} {{}} is more than {MAX_AHEAD.days} day after the consumer's clock "
                f"({now:%Y-%m-%dT%H:%M:%SZ}); check the node's clock",
                text,
            ),
        ),
    ]


def event_ids_ok(frame: pl.DataFrame) -> pl.Series:
    """``True`` where ``event_id`` is :func:`~streams.schema.make_event_id` of its row.

    Column-wise SHA-256 through the ``polars-hash`` plugin; if the plugin cannot run (a Polars
    release it was not built for), the same check in Python (about 5× slower), same verdicts.
    """
    try:
        return _event_ids_ok_plugin(frame)
    except Exception:  # noqa: BLE001 - any plugin failure falls back to the reference check
        return _event_ids_ok_python(frame)


_HASH_SLICE_ROWS = 25_000  # below this one thread hashes faster than splitting the work


def _event_ids_ok_plugin(frame: pl.DataFrame) -> pl.Series:
    """SHA-256 is the dearest rule (about 1.6 µs per event on a CPU without SHA instructions):
    large frames are hashed in slices collected together, one slice per Polars thread."""
    import polars_hash as plh

    key = pl.concat_str([pl.col("node"), pl.col("device_uuid"), pl.col("interval_start")], separator=EVENT_ID_SEPARATOR)
    check = (plh.col("_key").chash.sha2_256().str.slice(0, 32) == pl.col("event_id")).fill_null(False)
    columns = frame.select("node", "device_uuid", "interval_start", "event_id")
    slices = max(1, min(pl.thread_pool_size(), frame.height // _HASH_SLICE_ROWS))
    step = -(-frame.height // slices) if frame.height else 0
    parts = [
        columns.slice(i * step, step).lazy().select(_key=key, event_id="event_id").select(_id_ok=check)
        for i in range(slices)
    ]
    return pl.concat(pl.collect_all(parts)).to_series().alias("_id_ok")


def _event_ids_ok_python(frame: pl.DataFrame) -> pl.Series:
    return pl.Series(
        "_id_ok",
        event_ids_match(
            frame["node"].to_list(),
            frame["device_uuid"].to_list(),
            frame["interval_start"].to_list(),
            frame["event_id"].to_list(),
        ),
        dtype=pl.Boolean(),
    )


def _parse_ts(column: str) -> pl.Expr:
    text = pl.col(column)
    parsed = text.str.strptime(pl.Datetime("us"), "%Y-%m-%dT%H:%M:%SZ", strict=False)  # null for 02-30
    return pl.when(text.str.contains(_TS_PATTERN)).then(parsed).dt.replace_time_zone("UTC")


def _not_finite(column: str) -> pl.Expr:
    return ~pl.col(column).is_finite()


def _rules(accounts: Accounts, now: datetime) -> list[Rule]:
    """Every rule of schema v1, in the order a row is judged: the first broken one is its verdict."""
    length_s = (pl.col("_interval_end") - pl.col("_interval_start")).dt.total_seconds()
    start_epoch = pl.col("_interval_start").dt.epoch("s")
    limit = length_s * pl.col("gpu_fraction") + EPSILON_SECONDS
    required = [name for name, (_, nullable) in FIELDS.items() if not nullable]
    any_missing = pl.any_horizontal([pl.col(n).is_null() for n in required])
    missing_names = pl.concat_str(
        [pl.when(pl.col(n).is_null()).then(pl.lit(n + " ")) for n in required], ignore_nulls=True
    )
    empty = pl.any_horizontal(
        [pl.col(n).str.strip_chars() == "" for n in ("site", "node", "entity", "project", "gpu_model")]
    )
    flags_have_null = pl.col("flags").list.eval(pl.element().is_null()).list.any()
    text_broken = {
        n: pl.col(n).str.contains_any(_CONTROL) | (pl.col(n).str.len_bytes() > MAX_TEXT_BYTES) for n in _TEXT_FIELDS
    } | {
        "flags": pl.col("flags")
        .list.eval(pl.element().str.contains_any(_CONTROL) | (pl.element().str.len_bytes() > MAX_TEXT_BYTES))
        .list.any()
    }
    bad_text = pl.any_horizontal(list(text_broken.values()))
    bad_text_names = pl.concat_str(
        [pl.when(broken).then(pl.lit(name)) for name, broken in text_broken.items()], separator=", ", ignore_nulls=True
    )
    rules: list[Rule] = [
        (any_missing, RefusalReason.MISSING_FIELD, pl.format("missing or null: {}", missing_names)),
        (flags_have_null, RefusalReason.WRONG_TYPE, pl.lit("wrong type: flags must be strings (a flag is null)")),
        (
            pl.col("schema_version") != SCHEMA_VERSION,
            RefusalReason.BAD_SCHEMA_VERSION,
            pl.format("schema_version {} is not supported (expected 1)", pl.col("schema_version")),
        ),
        (empty, RefusalReason.EMPTY_FIELD, pl.lit("site, node, entity, project and gpu_model must not be empty")),
        (
            bad_text,
            RefusalReason.BAD_TEXT,
            pl.format(f"{{}}: a control character, or longer than {MAX_TEXT_BYTES} bytes", bad_text_names),
        ),
        *_ts_rules("interval_start", now),
        *_ts_rules("interval_end", now),
        (
            (length_s <= 0) | (3600 % length_s.clip(1) != 0),
            RefusalReason.BAD_INTERVAL,
            pl.format("interval of {} s: it must be positive and divide an hour", length_s),
        ),
        (
            start_epoch % length_s.clip(1) != 0,
            RefusalReason.NOT_ALIGNED,
            pl.format("interval_start {} is not aligned to its {} s interval", pl.col("interval_start"), length_s),
        ),
        (
            ~pl.col("gpu_uuid").str.starts_with("GPU-")
            | ~((pl.col("device_uuid") == pl.col("gpu_uuid")) | pl.col("device_uuid").str.starts_with("MIG-")),
            RefusalReason.BAD_UUID,
            pl.format(
                "gpu_uuid must be a GPU-… UUID and device_uuid that UUID or a MIG-… UUID (got {}, {})",
                pl.col("gpu_uuid"),
                pl.col("device_uuid"),
            ),
        ),
        (
            _not_finite("gpu_fraction")
            | (pl.col("gpu_fraction") <= 0)
            | (pl.col("gpu_fraction") > 1)
            | ((pl.col("device_uuid") == pl.col("gpu_uuid")) & (pl.col("gpu_fraction") != 1)),
            RefusalReason.BAD_FRACTION,
            pl.format("gpu_fraction {} must be in (0, 1], and 1 for a whole GPU", pl.col("gpu_fraction")),
        ),
        (
            _not_finite("gpu_seconds") | (pl.col("gpu_seconds") < 0) | (pl.col("gpu_seconds") > limit),
            RefusalReason.BAD_DURATION,
            pl.format(
                "gpu_seconds {} is negative, not finite or more than the {} s interval × gpu_fraction {}",
                pl.col("gpu_seconds"),
                length_s,
                pl.col("gpu_fraction"),
            ),
        ),
        (
            _not_finite("busy_gpu_seconds")
            | (pl.col("busy_gpu_seconds") < 0)
            | (pl.col("busy_gpu_seconds") > pl.col("gpu_seconds") + EPSILON_SECONDS),
            RefusalReason.BAD_BUSY,
            pl.format("busy_gpu_seconds {} must be between 0 and gpu_seconds {}", pl.col("busy_gpu_seconds"), pl.col("gpu_seconds")),
        ),
        (
            _not_finite("energy_joules") | (pl.col("energy_joules") < 0),
            RefusalReason.BAD_ENERGY,
            pl.format("energy_joules {} must be a finite number, not negative", pl.col("energy_joules")),
        ),
        (
            (pl.col("samples") < 0)
            | (pl.col("expected_samples") < 1)
            | (pl.col("samples") > pl.col("expected_samples"))
            | (pl.col("expected_samples") > INT32_MAX),
            RefusalReason.BAD_SAMPLES,
            pl.format(
                f"samples {{}} / expected_samples {{}} are inconsistent (0 ≤ samples ≤ expected_samples ≤ {INT32_MAX})",
                pl.col("samples"),
                pl.col("expected_samples"),
            ),
        ),
        (
            ~pl.col("_id_ok"),
            RefusalReason.BAD_EVENT_ID,
            pl.format("event_id {} is not the hash of node, device_uuid and interval_start", pl.col("event_id")),
        ),
        (
            ~pl.col("entity").is_in(list(accounts.entities)),
            RefusalReason.UNKNOWN_ENTITY,
            pl.format("entity {} is not in the registry", pl.col("entity")),
        ),
        (
            (pl.col("project") != UNATTRIBUTED) & pl.col("_owner").is_null(),
            RefusalReason.UNKNOWN_PROJECT,
            pl.format("project {} is not in the registry", pl.col("project")),
        ),
        (
            (pl.col("project") != UNATTRIBUTED) & (pl.col("_owner") != pl.col("entity")),
            RefusalReason.PROJECT_OF_OTHER_ENTITY,
            pl.format("project {} belongs to {}, not to {}", pl.col("project"), pl.col("_owner"), pl.col("entity")),
        ),
    ]
    if accounts.gpu_models is not None:
        rules.append(
            (
                ~pl.col("gpu_model").is_in(list(accounts.gpu_models)),
                RefusalReason.UNKNOWN_GPU_MODEL,
                pl.format("gpu_model {} has no rate card in the registry (names must match exactly)", pl.col("gpu_model")),
            )
        )
    return rules


def check_rules(frame: pl.DataFrame, accounts: Accounts) -> pl.DataFrame:
    """Add ``_interval_start``/``_interval_end`` (UTC), ``reason_code`` and ``reason``.

    ``reason_code`` is null for a valid row, else the code of the first rule broken, in the
    order of :func:`_rules`; ``reason`` is that rule's sentence. ``accounts.clock`` is read
    once per call.
    """
    now = accounts.clock().astimezone(UTC)
    rules = _rules(accounts, now)
    projects = pl.DataFrame(
        {"project": list(accounts.project_entity), "_owner": list(accounts.project_entity.values())},
        schema={"project": pl.String(), "_owner": pl.String()},
    )

    def first_broken(indices: list[int]) -> pl.Expr:
        rule = pl.lit(None, dtype=pl.Int16())
        for index in reversed(indices):
            rule = pl.when(rules[index][0].fill_null(False)).then(pl.lit(index, dtype=pl.Int16())).otherwise(rule)
        return rule

    def code_of(rule: pl.Expr) -> pl.Expr:
        return rule.replace_strict(
            list(range(len(rules))), [str(code) for _, code, _ in rules], default=None, return_dtype=pl.String()
        )

    # Every row goes through the cheap rules; the regex rules that only tell *why* a timestamp
    # did not parse (no timezone, not UTC) run on refused rows alone. They refine
    # bad_timestamp, which catches the same rows, so the verdicts do not change.
    precise_only = {RefusalReason.NO_TIMEZONE, RefusalReason.NOT_UTC}
    cheap = [i for i, (_, code, _) in enumerate(rules) if code not in precise_only]
    checked = (
        frame.with_columns(
            _interval_start=_parse_ts("interval_start"),
            _interval_end=_parse_ts("interval_end"),
            _id_ok=event_ids_ok(frame),
        )
        .join(projects, on="project", how="left", maintain_order="left")
        .with_columns(_rule=first_broken(cheap))
    )
    if checked["_rule"].null_count() == checked.height:  # the common case: nothing wrong
        return checked.with_columns(
            reason_code=pl.lit(None, dtype=pl.String()), reason=pl.lit(None, dtype=pl.String())
        ).drop("_owner", "_id_ok", "_rule")
    # sentences are built only for the refused rows (building them for all rows costs more
    # than every rule together)
    reason = pl.lit(None, dtype=pl.String())
    for index in reversed(range(len(rules))):
        reason = pl.when(pl.col("_rule") == index).then(rules[index][2]).otherwise(reason)
    checked = checked.with_row_index("_row")
    good = checked.filter(pl.col("_rule").is_null()).with_columns(
        reason_code=pl.lit(None, dtype=pl.String()), reason=pl.lit(None, dtype=pl.String())
    )
    bad = (
        checked.filter(pl.col("_rule").is_not_null())
        .with_columns(_rule=first_broken(list(range(len(rules)))))
        .with_columns(reason_code=code_of(pl.col("_rule")), reason=reason)
    )
    return pl.concat([good, bad]).sort("_row").drop("_row", "_owner", "_id_ok", "_rule")
