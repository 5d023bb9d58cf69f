"""Decoding and validating usage events, column-wise with Polars.

Two paths give the same verdicts:

* the fast path decodes a whole message (JSON Lines) with ``polars.read_ndjson`` under the
  declared wire schema;
* when that fails (a line that is not JSON, a field of the wrong type), the slow path parses
  that message line by line with ``json.loads``, refuses the lines that are not well-typed
  events, and hands the rest to the same column-wise rules.

:func:`check_rules` holds every semantic rule of schema v1 once, as Polars expressions, and
returns the first rule each row breaks (``reason_code``) with a sentence naming the value
(``reason``). Registry checks (entity and project known, project belongs to the entity) take
an :class:`Accounts` so that ``streams`` never imports ``accounting``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from collections.abc import Mapping, Sequence

import polars as pl
import pyarrow as pa

from streams.schema import (
    EVENT_ID_SEPARATOR,
    FIELDS,
    SCHEMA_VERSION,
    UNATTRIBUTED,
    RefusalReason,
    event_ids_match,
)
from streams.wire import ARROW_WIRE_SCHEMA, ArrowBatchError, decode_arrow, is_arrow, raw_of_unreadable

# schema v1 as Polars types, from the same declaration as the Arrow wire schema
WIRE_SCHEMA: dict[str, pl.DataType] = dict(pl.from_arrow(ARROW_WIRE_SCHEMA.empty_table()).schema)

EPSILON_SECONDS = 1e-6  # float slack when comparing seconds


@dataclasses.dataclass(frozen=True, slots=True)
class Accounts:
    """Who may be billed: known entities and, per project, the entity that owns it."""

    entities: frozenset[str]
    project_entity: Mapping[str, str]


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
    into one typed frame plus early refusals.

    The frame has the wire columns plus ``_source`` (``<message source>#<line>``) and
    ``_raw`` (only filled for rows that came through the slow path; the fast path leaves it
    null and :func:`raw_lines` recovers it for the rare refused row).
    """
    messages = [(source, payload) for source, payload in messages if is_arrow(payload) or payload.strip()]
    if any(is_arrow(payload) for _, payload in messages):
        return _decode_mixed(messages)
    return _decode_json(messages)


def _decode_mixed(messages: Sequence[tuple[str, bytes]]) -> tuple[pl.DataFrame, list[Refused]]:
    """Messages in order: each run of JSON messages decoded together, each run of Arrow
    messages concatenated in Arrow and handed to Polars once (per-message conversion costs
    more than the rows)."""
    frames: list[pl.DataFrame] = []
    refused: list[Refused] = []
    json_run: list[tuple[str, bytes]] = []
    arrow_run: list[tuple[str, pa.Table]] = []

    def flush() -> None:
        if json_run:
            frame, bad = _decode_json(json_run)
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
    return _with_sources(frame, [source for source, _ in tables], [table.num_rows for _, table in tables])


def _with_sources(frame: pl.DataFrame, sources: Sequence[str], rows: Sequence[int]) -> pl.DataFrame:
    """Add ``_source`` (``<message source>#<row in message>``) and a null ``_raw`` to the rows
    of consecutive messages that hold ``rows[i]`` rows each."""
    message = pl.Series("_message", sources).repeat_by(pl.Series(rows, dtype=pl.UInt32())).explode()
    return frame.with_columns(message).with_columns(
        _source=pl.format("{}#{}", pl.col("_message"), pl.int_range(1, pl.len() + 1).over("_message")),
        _raw=pl.lit(None, dtype=pl.String()),
    ).drop("_message")


def _decode_json(messages: Sequence[tuple[str, bytes]]) -> tuple[pl.DataFrame, list[Refused]]:
    whole = _fast_all(messages)
    if whole is not None:
        return whole, []
    frames: list[pl.DataFrame] = []
    refused: list[Refused] = []
    for source, payload in messages:
        frame = _fast(source, payload)
        if frame is None:
            frame, bad = _slow(source, payload)
            refused.extend(bad)
        if frame.height:
            frames.append(frame)
    if not frames:
        return _empty(), refused
    return pl.concat(frames, how="vertical"), refused


def _line_count(payload: bytes) -> int:
    return payload.count(b"\n") + (0 if payload.endswith(b"\n") else 1)


def _fast_all(messages: Sequence[tuple[str, bytes]]) -> pl.DataFrame | None:
    """All messages in one ``read_ndjson`` call (the common case: nothing wrong anywhere)."""
    if not messages:
        return _empty()
    counts = [_line_count(payload) for _, payload in messages]
    buffer = b"\n".join(payload.rstrip(b"\n") for _, payload in messages)
    try:
        frame = pl.read_ndjson(io.BytesIO(buffer), schema=WIRE_SCHEMA)
    except Exception:  # some message is bad: find it message by message
        return None
    if frame.height != sum(counts):
        return None
    return _with_sources(frame, [source for source, _ in messages], counts)


def _empty() -> pl.DataFrame:
    schema = dict(WIRE_SCHEMA) | {"_source": pl.String(), "_raw": pl.String()}
    return pl.DataFrame(schema=schema)


def _fast(source: str, payload: bytes) -> pl.DataFrame | None:
    lines = _line_count(payload)
    try:
        frame = pl.read_ndjson(io.BytesIO(payload), schema=WIRE_SCHEMA)
    except Exception:  # any decode problem: the slow path finds the line and says why
        return None
    if frame.height != lines:  # blank lines: positions would not match, take the slow path
        return None
    return frame.with_columns(
        _source=pl.format("{}#{}", pl.lit(source), pl.int_range(1, frame.height + 1)),
        _raw=pl.lit(None, dtype=pl.String()),
    )


def _slow(source: str, payload: bytes) -> tuple[pl.DataFrame, list[Refused]]:
    rows: list[dict] = []
    refused: list[Refused] = []
    for number, raw_bytes in enumerate(payload.split(b"\n"), start=1):
        if not raw_bytes.strip():
            continue
        raw = raw_bytes.decode("utf-8", "replace")
        where = f"{source}#{number}"
        try:
            obj = json.loads(raw_bytes)
        except ValueError as exc:
            refused.append(Refused(where, raw, RefusalReason.NOT_JSON, f"not JSON: {exc}"))
            continue
        if not isinstance(obj, dict):
            refused.append(
                Refused(where, raw, RefusalReason.NOT_AN_OBJECT, "a usage event must be a JSON object")
            )
            continue
        problem = _type_problem(obj)
        if problem:
            refused.append(Refused(where, raw, *problem))
            continue
        row = {name: obj.get(name) for name in WIRE_SCHEMA}
        row["_source"], row["_raw"] = where, raw
        rows.append(row)
    schema = dict(WIRE_SCHEMA) | {"_source": pl.String(), "_raw": pl.String()}
    return pl.DataFrame(rows, schema=schema, strict=False), refused


def _type_problem(obj: dict) -> tuple[RefusalReason, str] | None:
    missing = [name for name, (_, nullable) in FIELDS.items() if not nullable and obj.get(name) is None]
    if missing:
        return RefusalReason.MISSING_FIELD, f"missing or null: {', '.join(missing)}"
    wrong = []
    for name, (types, _) in FIELDS.items():
        value = obj.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, types):
            wrong.append(f"{name} is {type(value).__name__}")
        elif name == "flags" and not all(isinstance(f, str) for f in value):
            wrong.append("flags must be strings")
    if wrong:
        return RefusalReason.WRONG_TYPE, "wrong type: " + "; ".join(wrong)
    return None


_TS_PATTERN = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$"
_NAIVE_PATTERN = r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?$"
_OFFSET_PATTERN = r"[+-]\d{2}:?\d{2}$"


def _ts_rule(column: str) -> list[tuple[pl.Expr, RefusalReason, pl.Expr]]:
    text = pl.col(column)
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
            pl.col(f"_{column}").is_null(),
            RefusalReason.BAD_TIMESTAMP,
            pl.format(f"{column} {{}} is not an RFC 3339 UTC timestamp (YYYY-MM-DDTHH:MM:SSZ)", text),
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
    parsed = text.str.strptime(pl.Datetime("us"), "%Y-%m-%dT%H:%M:%SZ", strict=False)
    return pl.when(text.str.contains(_TS_PATTERN)).then(parsed).dt.replace_time_zone("UTC")


def check_rules(frame: pl.DataFrame, accounts: Accounts) -> pl.DataFrame:
    """Add ``interval_start_ts``/``interval_end_ts`` (UTC), ``reason_code`` and ``reason``.

    ``reason_code`` is null for a valid row, else the first rule broken, in the order below.
    """
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
    known_entities = list(accounts.entities)
    projects = pl.DataFrame(
        {"project": list(accounts.project_entity), "_owner": list(accounts.project_entity.values())},
        schema={"project": pl.String(), "_owner": pl.String()},
    )
    rules: list[tuple[pl.Expr, RefusalReason, pl.Expr]] = [
        (any_missing, RefusalReason.MISSING_FIELD, pl.format("missing or null: {}", missing_names)),
        (
            pl.col("schema_version") != SCHEMA_VERSION,
            RefusalReason.BAD_SCHEMA_VERSION,
            pl.format("schema_version {} is not supported (expected 1)", pl.col("schema_version")),
        ),
        (empty, RefusalReason.EMPTY_FIELD, pl.lit("site, node, entity, project and gpu_model must not be empty")),
        *_ts_rule("interval_start"),
        *_ts_rule("interval_end"),
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
            (pl.col("gpu_fraction") <= 0)
            | (pl.col("gpu_fraction") > 1)
            | ((pl.col("device_uuid") == pl.col("gpu_uuid")) & (pl.col("gpu_fraction") != 1)),
            RefusalReason.BAD_FRACTION,
            pl.format("gpu_fraction {} must be in (0, 1], and 1 for a whole GPU", pl.col("gpu_fraction")),
        ),
        (
            (pl.col("gpu_seconds") < 0) | (pl.col("gpu_seconds") > limit) | pl.col("gpu_seconds").is_nan(),
            RefusalReason.BAD_DURATION,
            pl.format(
                "gpu_seconds {} is negative or more than the {} s interval × gpu_fraction {}",
                pl.col("gpu_seconds"),
                length_s,
                pl.col("gpu_fraction"),
            ),
        ),
        (
            (pl.col("busy_gpu_seconds") < 0)
            | (pl.col("busy_gpu_seconds") > pl.col("gpu_seconds") + EPSILON_SECONDS)
            | pl.col("busy_gpu_seconds").is_nan(),
            RefusalReason.BAD_BUSY,
            pl.format("busy_gpu_seconds {} must be between 0 and gpu_seconds {}", pl.col("busy_gpu_seconds"), pl.col("gpu_seconds")),
        ),
        (
            (pl.col("energy_joules") < 0) | pl.col("energy_joules").is_nan(),
            RefusalReason.BAD_ENERGY,
            pl.format("energy_joules {} must not be negative", pl.col("energy_joules")),
        ),
        (
            (pl.col("samples") < 0)
            | (pl.col("expected_samples") < 1)
            | (pl.col("samples") > pl.col("expected_samples")),
            RefusalReason.BAD_SAMPLES,
            pl.format("samples {} / expected_samples {} are inconsistent", pl.col("samples"), pl.col("expected_samples")),
        ),
        (
            ~pl.col("_id_ok"),
            RefusalReason.BAD_EVENT_ID,
            pl.format("event_id {} is not the hash of node, device_uuid and interval_start", pl.col("event_id")),
        ),
        (
            ~pl.col("entity").is_in(known_entities),
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
    def first_broken(rule_list: list[tuple[pl.Expr, RefusalReason, pl.Expr]]) -> pl.Expr:
        code = pl.lit(None, dtype=pl.String())
        for condition, rule_code, _ in reversed(rule_list):
            code = pl.when(condition.fill_null(False)).then(pl.lit(str(rule_code))).otherwise(code)
        return code

    # Every row goes through the cheap rules; the regex rules that only tell *why* a timestamp
    # did not parse (no timezone, not UTC) run on refused rows alone. They refine
    # bad_timestamp, which catches the same rows, so the verdicts do not change.
    precise_only = {RefusalReason.NO_TIMEZONE, RefusalReason.NOT_UTC}
    code = first_broken([rule for rule in rules if rule[1] not in precise_only])
    checked = (
        frame.with_columns(
            _interval_start=_parse_ts("interval_start"),
            _interval_end=_parse_ts("interval_end"),
            _id_ok=event_ids_ok(frame),
        )
        .join(projects, on="project", how="left", maintain_order="left")
        .with_columns(reason_code=code)
    )
    if checked["reason_code"].null_count() == checked.height:  # the common case: nothing wrong
        return checked.with_columns(reason=pl.lit(None, dtype=pl.String())).drop("_owner", "_id_ok")
    # sentences are built only for the refused rows (building them for all rows costs more
    # than every rule together)
    reason = pl.lit(None, dtype=pl.String())
    for _, rule_code, message in reversed(rules):
        reason = pl.when(pl.col("reason_code") == str(rule_code)).then(message).otherwise(reason)
    checked = checked.with_row_index("_row")
    good = checked.filter(pl.col("reason_code").is_null()).with_columns(reason=pl.lit(None, dtype=pl.String()))
    bad = (
        checked.filter(pl.col("reason_code").is_not_null())
        .with_columns(reason_code=first_broken(rules))
        .with_columns(reason=reason)
    )
    return pl.concat([good, bad]).sort("_row").drop("_row", "_owner", "_id_ok")
