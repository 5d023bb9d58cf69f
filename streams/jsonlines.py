"""JSON Lines on the wire: one strict decoder, the only reader of a JSON usage event.

A line is read alone, so its verdict never depends on the lines around it: UTF-8 (no byte
order mark), one RFC 8259 JSON object, no key named twice at any depth, each field of schema
v1 of its JSON type (a string field holds a JSON string; ``job_id: 123`` is ``wrong_type``,
never ``"123"``), integers within 64 bits, strings that UTF-8 can encode. ``NaN``,
``Infinity`` and numbers beyond a float's range are read as the floats they name, and the
rules (``streams.validate.check_rules``) refuse them by field, as they do the same float in
an Arrow batch. Unknown extra fields are ignored.

Python's ``json`` is the parser: it reads what RFC 8259 allows and reports every object's
pairs (``object_pairs_hook``), which is what finds a duplicate key. Polars' and pyarrow's
NDJSON readers are faster but not strict: they turn ``123`` into ``"123"`` for a string
column, take one of two duplicate keys, or (pyarrow 26) crash on a line holding ``null``.

**The fast path** (``streams.fastjson``) reads most lines with a typed ``msgspec`` decode at
about a third of the cost, and hands every line it cannot vouch for to the decoder above, so
the verdicts are the same by construction: a line is taken from the fast path only when it
holds no backslash, msgspec read it as an object of schema v1's JSON types, every integer fits
64 bits, every float is finite and below 2^53 in size, and the count of ``"`` in the line's
bytes is exactly two per key and per string value it decoded (a key named twice, or any key
not of schema v1, leaves more quotes than that). The property test in
``tests/unit/test_hostile_corpus.py`` compares both routes line by line.
"""

from __future__ import annotations

import gc
import json
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from streams.fastjson import decode_fast, decode_messages_fast, line_views
from streams.schema import FIELDS, RefusalReason
from streams.wire import ARROW_WIRE_SCHEMA

JSON_WHITESPACE = b" \t\r"  # with "\n", which ends a line; a line of only these is not an event
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


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
    gc_was_on = gc.isenabled()
    gc.disable()  # the decode allocates many small objects and frees none: a collection finds nothing
    try:
        columns, kept, slow = decode_fast(lines, ARROW_WIRE_SCHEMA)
        if slow:
            values = {name: array.to_pylist() for name, array in zip(FIELDS, columns.arrays, strict=True)}
            return _decode_slow_and_merge(lines, values, kept, slow)
    finally:
        if gc_was_on:
            gc.enable()
    return pa.Table.from_arrays([*columns.arrays, _texts(lines, kept)], names=[*FIELDS, "_raw"]), kept, []


def decode_json_messages(
    payloads: Sequence[bytes],
) -> tuple[pa.Table, np.ndarray, np.ndarray, list[tuple[int, int, bytes, RefusalReason, str]]]:
    """Messages of JSON Lines as one table of :data:`~streams.wire.ARROW_WIRE_SCHEMA` plus
    ``_raw`` (each row's line), in message and line order, with each row's message index and
    1-based line number, and the refusals ``(message, line, bytes, code, sentence)``.

    Messages the fast path vouches for whole are decoded in one call each, their ``_raw`` a
    view of the payload's own bytes; the others go line by line through
    :func:`decode_json_lines` (same verdicts: each line is judged alone either way).
    """
    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        columns, fast, slow = decode_messages_fast(payloads, ARROW_WIRE_SCHEMA)
    finally:
        if gc_was_on:
            gc.enable()
    table = pa.Table.from_arrays([*columns.arrays, line_views(fast)], names=[*FIELDS, "_raw"])
    message = np.repeat([m.index for m in fast], [m.starts.size for m in fast]).astype(np.int64)
    number = np.concatenate([m.numbers for m in fast]).astype(np.int64) if fast else np.zeros(0, dtype=np.int64)
    refused: list[tuple[int, int, bytes, RefusalReason, str]] = []
    if not slow:
        return table, message, number, refused
    lines: list[bytes] = []
    where: list[tuple[int, int]] = []
    for index in slow:
        for line_number, line in enumerate(payloads[index].split(b"\n"), start=1):
            if line.strip(JSON_WHITESPACE):
                lines.append(line)
                where.append((index, line_number))
    slow_table, kept, bad = decode_json_lines(lines)
    refused = [(*where[i], lines[i], code, why) for i, code, why in bad]
    slow_table = slow_table.set_column(len(FIELDS), "_raw", slow_table.column("_raw").cast(pa.string_view()))
    slow_message = np.array([where[i][0] for i in kept], dtype=np.int64)
    slow_number = np.array([where[i][1] for i in kept], dtype=np.int64)
    # message order: both tables hold their rows grouped by message, in order; interleave the
    # groups (slices, no copy)
    pieces, messages_out, numbers_out = [], [], []
    fast_at = slow_at = 0
    fast_sizes = {m.index: m.starts.size for m in fast}
    slow_sizes = dict(zip(*np.unique(slow_message, return_counts=True), strict=True)) if slow_message.size else {}
    for index in range(len(payloads)):
        if index in fast_sizes:
            size = fast_sizes[index]
            pieces.append(table.slice(fast_at, size))
            messages_out.append(message[fast_at : fast_at + size])
            numbers_out.append(number[fast_at : fast_at + size])
            fast_at += size
        elif index in slow_sizes:
            size = int(slow_sizes[index])
            pieces.append(slow_table.slice(slow_at, size))
            messages_out.append(slow_message[slow_at : slow_at + size])
            numbers_out.append(slow_number[slow_at : slow_at + size])
            slow_at += size
    if not pieces:
        return table, message, number, refused
    table = pa.concat_tables(pieces)
    message, number = np.concatenate(messages_out), np.concatenate(numbers_out)
    return table, message, number, refused


def _texts(lines: Sequence[bytes], kept: list[int]) -> pa.Array:
    """The kept lines' text, built from their bytes (UTF-8 checked already) in one Arrow
    buffer: no Python string per line."""
    return pa.array([lines[i] for i in kept], type=pa.binary()).cast(pa.string())


def _decode_slow_and_merge(
    lines: Sequence[bytes], fast_columns: dict[str, list[Any]], fast_kept: list[int], slow: list[int]
) -> tuple[pa.Table, list[int], list[tuple[int, RefusalReason, str]]]:
    """The lines the fast path did not vouch for, through the strict decoder, merged in line
    order with the fast rows (which pass its checks unchanged)."""
    problems: dict[int, tuple[RefusalReason, list[str]]] = {}
    objects: list[dict[str, Any]] = []
    slow_kept: list[int] = []
    for index in slow:
        obj, _ = _decode_line(lines[index])
        if isinstance(obj, tuple):
            problems[index] = (obj[0], [obj[1]])
            continue
        objects.append(obj)
        slow_kept.append(index)
    # one list of rows in line order: fast rows as their column values, slow rows as dicts
    order = sorted([(index, True, row) for row, index in enumerate(fast_kept)] + [(index, False, row) for row, index in enumerate(slow_kept)])
    kept = [index for index, _, _ in order]
    bad_rows: dict[int, tuple[RefusalReason, list[str]]] = {}

    def refuse(row: int, code: RefusalReason, what: str) -> None:
        bad_rows.setdefault(row, (code, []))[1].append(what)

    arrays = []
    for name, field in zip(FIELDS, ARROW_WIRE_SCHEMA, strict=True):
        fast_values = fast_columns[name]
        values = [fast_values[row] if fast else objects[row].get(name) for _, fast, row in order]
        slow_rows = [position for position, (_, fast, _) in enumerate(order) if not fast]
        for row in slow_rows:
            value = values[row]
            if type(value) not in _ACCEPTED[name]:
                refuse(row, RefusalReason.WRONG_TYPE, f"{name} is {type(value).__name__}")
                values[row] = None
            elif name == "flags" and value and not all(type(f) is str for f in value):
                refuse(row, RefusalReason.WRONG_TYPE, "flags must be strings")
                values[row] = None
            elif name in _FLOAT_COLUMNS and type(value) is int:  # JSON 60 for 60.0; beyond a float: ±inf
                values[row] = _as_float(value)
        arrays.append(_column(name, values, field.type, refuse))
    arrays.append(_texts(lines, kept))
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
    string with a lone surrogate) is refused, its row nulled, and the rest converted. Tried
    for the whole column first, row by row only when that fails."""
    try:
        return pa.array(values, type=arrow_type)
    except (OverflowError, UnicodeEncodeError, pa.ArrowException):
        pass
    for row, value in enumerate(values):
        try:
            pa.array([value], type=arrow_type)
        except (OverflowError, UnicodeEncodeError, pa.ArrowException) as exc:
            if type(value) is int:
                refuse(row, _INT_RANGE_REASON[name], f"{name} {value} does not fit a 64-bit integer")
            elif isinstance(exc, UnicodeEncodeError):
                refuse(row, RefusalReason.BAD_TEXT, f"{name} holds a lone surrogate, which UTF-8 cannot encode")
            else:  # a value of the right JSON type that Arrow still refuses: say what it said
                refuse(row, RefusalReason.WRONG_TYPE, f"{name} cannot be stored ({exc})"[:300])
            values[row] = None
    return pa.array(values, type=arrow_type)


def _sentence(code: RefusalReason, what: list[str]) -> str:
    if code == RefusalReason.WRONG_TYPE:
        return "wrong type: " + "; ".join(what)
    return "; ".join(what)


def decode_json_lines_reference(
    lines: Sequence[bytes],
) -> tuple[pa.Table, list[int], list[tuple[int, RefusalReason, str]]]:
    """:func:`decode_json_lines` with every line through the reference decoder (no fast
    path): what the fast path is held to, line for line, by the tests."""
    empty: dict[str, list[Any]] = {name: [] for name in FIELDS}
    return _decode_slow_and_merge(lines, empty, [], list(range(len(lines))))
