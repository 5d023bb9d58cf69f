"""Decoding and validating usage events: one decoder for JSON, one set of rules for every row.

A line's verdict depends on that line alone, never on the other lines of its message, the
message's wire format or where it sits in a batch (``tests/unit/test_hostile_corpus.py``
holds the code to this with a property test):

* **JSON Lines** are decoded line by line by one strict decoder (``streams.jsonlines``): the
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
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime

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
from streams.jsonlines import decode_json_messages
from streams.wire import ARROW_WIRE_SCHEMA, ArrowBatchError, decode_arrow, is_arrow, raw_of_line, raw_of_unreadable

# schema v1 as Polars types, from the same declaration as the Arrow wire schema
WIRE_SCHEMA: dict[str, pl.DataType] = dict(pl.from_arrow(ARROW_WIRE_SCHEMA.empty_table()).schema)

EPSILON_SECONDS = 1e-6  # float slack when comparing seconds: gpu_seconds may be rounded to the microsecond
# A MIG instance is k of a GPU's n slices; n is 1..8 on every GPU that has MIG (7 on A100/H100/
# B200, 4 on A30; some profiles count 6 or 8). A fraction is read as the k/n within this of it,
# so 0.142857 (1/7 printed to six places, as gpuledger's own exports print it) is 1/7, and the
# k/n is what is stored: the same verdict and the same stored value however it was printed.
MIG_SLICE_COUNTS = range(1, 9)
FRACTION_TOLERANCE = 1e-6  # six decimal places, rounded, truncated or rounded up


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
    table, message, number, bad = decode_json_messages([payload for _, payload in messages])
    sources = [source for source, _ in messages]
    refused = [Refused(f"{sources[m]}#{n}", raw_of_line(line), code, why) for m, n, line, code, why in bad]
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    frame = frame.with_columns(
        _source=pl.format(
            "{}#{}",
            pl.Series(sources, dtype=pl.String()).gather(pl.Series(message, dtype=pl.UInt32())),
            pl.Series(number, dtype=pl.Int64()),
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


def canonical_fraction(column: str) -> pl.Expr:
    """The k/n (n in :data:`MIG_SLICE_COUNTS`, 1 ≤ k ≤ n) within :data:`FRACTION_TOLERANCE` of
    ``column``, as the float64 nearest k/n; null when there is none (refused: bad_fraction).
    Fractions of distinct k/n are over 0.017 apart, so at most one k/n is that close."""
    value = pl.col(column)
    candidates = []
    for n in MIG_SLICE_COUNTS:
        k = (value * n).round(0)
        close = ((value - k / n).abs() <= FRACTION_TOLERANCE) & (k >= 1) & (k <= n)
        candidates.append(pl.when(close.fill_null(False)).then(k / n))
    return pl.coalesce(candidates)


def _not_finite(column: str) -> pl.Expr:
    return ~pl.col(column).is_finite()


def _rules(accounts: Accounts, now: datetime) -> list[Rule]:
    """Every rule of schema v1, in the order a row is judged: the first broken one is its verdict.

    The groups below keep that order; moving a rule between them changes which reason a row
    that breaks two rules is given (``tests/unit/test_hostile_corpus.py`` pins the verdicts)."""
    length_s = (pl.col("_interval_end") - pl.col("_interval_start")).dt.total_seconds()
    return [
        *_shape_rules(),
        *_ts_rules("interval_start", now),
        *_ts_rules("interval_end", now),
        *_interval_rules(length_s),
        *_device_rules(),
        *_measure_rules(length_s),
        *_identity_rules(accounts),
    ]


def _shape_rules() -> list[Rule]:
    """The row has every field, of the right schema version, with readable text."""
    required = [name for name, (_, nullable) in FIELDS.items() if not nullable]
    any_missing = pl.any_horizontal([pl.col(n).is_null() for n in required])
    missing_names = pl.concat_str(
        [pl.when(pl.col(n).is_null()).then(pl.lit(n + " ")) for n in required], ignore_nulls=True
    )
    empty = pl.any_horizontal(
        [pl.col(n).str.strip_chars() == "" for n in ("site", "node", "entity", "project", "gpu_model")]
    )
    flags_have_null = pl.col("flags").list.eval(pl.element().is_null()).list.any()
    return [
        (any_missing, RefusalReason.MISSING_FIELD, pl.format("missing or null: {}", missing_names)),
        (flags_have_null, RefusalReason.WRONG_TYPE, pl.lit("wrong type: flags must be strings (a flag is null)")),
        (
            pl.col("schema_version") != SCHEMA_VERSION,
            RefusalReason.BAD_SCHEMA_VERSION,
            pl.format("schema_version {} is not supported (expected 1)", pl.col("schema_version")),
        ),
        (empty, RefusalReason.EMPTY_FIELD, pl.lit("site, node, entity, project and gpu_model must not be empty")),
        _text_rule(),
    ]


def _text_rule() -> Rule:
    """No control character and no over-long value in a text field or a flag; names each one."""
    text_broken = {
        n: pl.col(n).str.contains_any(_CONTROL) | (pl.col(n).str.len_bytes() > MAX_TEXT_BYTES) for n in _TEXT_FIELDS
    } | {
        "flags": pl.col("flags")
        .list.eval(pl.element().str.contains_any(_CONTROL) | (pl.element().str.len_bytes() > MAX_TEXT_BYTES))
        .list.any()
    }
    bad_text_names = pl.concat_str(
        [pl.when(broken).then(pl.lit(name)) for name, broken in text_broken.items()], separator=", ", ignore_nulls=True
    )
    return (
        pl.any_horizontal(list(text_broken.values())),
        RefusalReason.BAD_TEXT,
        pl.format(f"{{}}: a control character, or longer than {MAX_TEXT_BYTES} bytes", bad_text_names),
    )


def _interval_rules(length_s: pl.Expr) -> list[Rule]:
    """The interval divides the hour and starts on a multiple of its length (so it lies in one hour)."""
    start_epoch = pl.col("_interval_start").dt.epoch("s")
    return [
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
    ]


def _device_rules() -> list[Rule]:
    """The device is a GPU or a MIG instance of it, and its fraction is k/n slices (1 for a GPU)."""
    return [
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
            pl.col("_fraction").is_null()
            | ((pl.col("device_uuid") == pl.col("gpu_uuid")) & (pl.col("_fraction") != 1)),
            RefusalReason.BAD_FRACTION,
            pl.format(
                f"gpu_fraction {{}} must be slices/max slices (k/n, n ≤ 8, within {FRACTION_TOLERANCE:g}), and 1 for a whole GPU",
                pl.col("gpu_fraction"),
            ),
        ),
    ]


def _measure_rules(length_s: pl.Expr) -> list[Rule]:
    """What was measured fits the interval: time within interval × fraction, busy within time."""
    limit = length_s * pl.col("_fraction") + EPSILON_SECONDS  # the k/n the fraction stands for
    return [
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
    ]


def _identity_rules(accounts: Accounts) -> list[Rule]:
    """The event_id is the row's own hash, and the registry knows who is billed for what."""
    rules: list[Rule] = [
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
    once per call. A timestamp outside the window is left null in ``_interval_start``/
    ``_interval_end``: a refused row then names no period (no ``0000-01`` or ``+10000-01``
    partition, no instant Python cannot hold).
    """
    now = accounts.clock()
    if now.tzinfo is None:
        raise ValueError("Accounts.clock returned a naive datetime: give it an aware UTC clock (streams.validate.utc_now)")
    now = now.astimezone(UTC)
    rules = _rules(accounts, now)
    # Every row goes through the cheap rules; the regex rules that only tell *why* a timestamp
    # did not parse (no timezone, not UTC) run on refused rows alone. They refine
    # bad_timestamp, which catches the same rows, so the verdicts do not change.
    precise_only = {RefusalReason.NO_TIMEZONE, RefusalReason.NOT_UTC}
    cheap = [i for i, (_, code, _) in enumerate(rules) if code not in precise_only]
    checked = _with_derived(frame, accounts).with_columns(_rule=_first_broken(rules, cheap))
    if checked["_rule"].null_count() == checked.height:  # the common case: nothing wrong
        return checked.with_columns(
            reason_code=pl.lit(None, dtype=pl.String()), reason=pl.lit(None, dtype=pl.String()), gpu_fraction=_STORED_FRACTION
        ).drop("_owner", "_id_ok", "_rule", "_fraction")
    return _judge_refused(checked, rules, now)


def _with_derived(frame: pl.DataFrame, accounts: Accounts) -> pl.DataFrame:
    """The columns the rules read: parsed timestamps, the event_id check, the k/n fraction and
    the project's owner in the registry (``_owner``, null for a project it does not know)."""
    projects = pl.DataFrame(
        {"project": list(accounts.project_entity), "_owner": list(accounts.project_entity.values())},
        schema={"project": pl.String(), "_owner": pl.String()},
    )
    return frame.with_columns(
        _interval_start=_parse_ts("interval_start"),
        _interval_end=_parse_ts("interval_end"),
        _id_ok=event_ids_ok(frame),
        _fraction=canonical_fraction("gpu_fraction"),
    ).join(projects, on="project", how="left", maintain_order="left")


def _first_broken(rules: Sequence[Rule], indices: list[int]) -> pl.Expr:
    """The index (into ``rules``) of the first of ``indices`` a row breaks; null if none."""
    rule = pl.lit(None, dtype=pl.Int16())
    for index in reversed(indices):
        rule = pl.when(rules[index][0].fill_null(False)).then(pl.lit(index, dtype=pl.Int16())).otherwise(rule)
    return rule


def _judge_refused(checked: pl.DataFrame, rules: Sequence[Rule], now: datetime) -> pl.DataFrame:
    """Every rule again (the precise ones too) on the rows a cheap rule refused, with their
    code and sentence; rows keep their order, and timestamps outside the window become null."""
    first = pl.lit(PROGRAMME_START, dtype=pl.Datetime("us", "UTC"))
    last = pl.lit(now + MAX_AHEAD, dtype=pl.Datetime("us", "UTC"))
    # sentences are built only for the refused rows (building them for all rows costs more
    # than every rule together)
    reason = pl.lit(None, dtype=pl.String())
    for index in reversed(range(len(rules))):
        reason = pl.when(pl.col("_rule") == index).then(rules[index][2]).otherwise(reason)
    code = pl.col("_rule").replace_strict(
        list(range(len(rules))), [str(code) for _, code, _ in rules], default=None, return_dtype=pl.String()
    )
    checked = checked.with_row_index("_row")
    good = checked.filter(pl.col("_rule").is_null()).with_columns(
        reason_code=pl.lit(None, dtype=pl.String()), reason=pl.lit(None, dtype=pl.String())
    )
    bad = (
        checked.filter(pl.col("_rule").is_not_null())
        .with_columns(_rule=_first_broken(rules, list(range(len(rules)))))
        .with_columns(reason_code=code, reason=reason)
    )
    in_window = {
        column: pl.when(pl.col(column).is_between(first, last)).then(pl.col(column))
        for column in ("_interval_start", "_interval_end")
    }
    return (
        pl.concat([good, bad])
        .sort("_row")
        .with_columns(gpu_fraction=_STORED_FRACTION)
        .drop("_row", "_owner", "_id_ok", "_rule", "_fraction")
        .with_columns(**in_window)
    )


# what is stored: the k/n a valid fraction stands for (a refused row keeps what it said)
_STORED_FRACTION = pl.coalesce(pl.col("_fraction"), pl.col("gpu_fraction"))
