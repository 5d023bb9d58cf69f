"""The fast path of the strict JSON decoder: a typed msgspec decode, and a screen that hands
every line it cannot vouch for back to the reference decoder (``streams.jsonlines``).

A line is *vouched for* only when all of these hold, so its row is exactly what the reference
decoder makes of it (the reference decoder judges every other line):

* it holds no backslash (no escapes: no ``\\"`` inside a string, no ``\\ud800`` lone
  surrogate, no key spelled with escapes);
* msgspec reads it as one JSON object whose schema v1 fields have their JSON types (strings
  for text, numbers for floats, integers for integers, a list of strings for ``flags``, or
  null); it refuses a byte order mark, bytes that are not UTF-8, control characters inside
  strings, ``NaN``/``Infinity`` and numbers beyond a float, as the reference decoder's checks
  would refuse or reroute them;
* every integer fits 64 bits (msgspec reads 2**70 into an ``int`` field) and every float is
  finite and below 2**53 in size (where msgspec's rounding of a long integer literal could
  differ from Python's ``float(int)``, the reference decides);
* the count of ``"`` in the line's bytes is two per key msgspec read plus two per string value
  (``flags`` elements included). Without backslashes every quote opens or closes a key or a
  string, so a key named twice, or any key not in schema v1 (whatever it holds, however
  deeply nested), leaves more quotes than that. The count is compared over the whole run of
  lines first (each line has at least as many quotes as it decoded, so equal totals mean every
  line is exact), line by line only when the totals differ.

A field the line does not name is told from a field it names as ``null`` by a default no
vouched-for line can produce: a text holding a raw NUL (msgspec refuses it unescaped, and
escapes are screened out), NaN for a float (msgspec refuses NaN) and, for ``flags``, a list
of that one text. An integer field has no such default: absent and ``null`` are both
``None`` there, and ``None`` counts as *not named*, so a line that names an integer field as
``null`` holds two more quotes than counted and goes to the reference decoder (the count
can only fall short of a line's quotes, never exceed them, so no screen is weakened). Counting
them is then a comparison in Arrow, not a Python call per value: the rows become one Arrow
struct array in one call, from their field tuples.

Intent: most lines cost one C-level decode; strictness costs a count and a few comparisons.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import math

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_FLOAT_EXACT_BELOW = 2.0**53
_QUOTE = b'"'
_BACKSLASH = b"\\"
_ABSENT_TEXT = "\x00absent"
_ABSENT_FLOAT = math.nan
_ABSENT_FLAGS = (_ABSENT_TEXT,)
_PYTHON_TYPES = {pa.int64(): int, pa.string(): str, pa.float64(): float, pa.list_(pa.string()): list[str]}
_ABSENT = {int: None, str: _ABSENT_TEXT, float: _ABSENT_FLOAT}

_DECODERS: dict[pa.Schema, msgspec.json.Decoder] = {}


def _decoder(schema: pa.Schema) -> msgspec.json.Decoder:
    if schema not in _DECODERS:
        fields = []
        for field in schema:
            kind = _PYTHON_TYPES[field.type]
            fields.append((field.name, kind | None, _ABSENT.get(kind, _ABSENT_FLAGS)))  # type: ignore[operator]
        _DECODERS[schema] = msgspec.json.Decoder(msgspec.defstruct("WireEvent", fields, gc=False))
    return _DECODERS[schema]


@dataclass(slots=True)
class Columns:
    """Decoded rows as Arrow arrays of the wire schema (absent fields null), with, per row,
    the quotes its keys and strings account for and whether a value needs the reference
    decoder (an integer past 64 bits, a float that is not finite or not below 2^53)."""

    arrays: list[pa.Array]
    quotes: np.ndarray
    doubtful: np.ndarray

    def without(self, drop: np.ndarray) -> Columns:
        keep = pa.array(~drop)
        return Columns([a.filter(keep) for a in self.arrays], self.quotes[~drop], self.doubtful[~drop])


def _columns(rows: list[Any], schema: pa.Schema) -> Columns:
    """The rows as :class:`Columns`: one struct array built from their tuples in one call,
    then per field the counts; :func:`_columns_by_value` when Arrow refuses a value (an
    integer past 64 bits), which marks such rows doubtful."""
    try:
        struct = pa.array(list(map(msgspec.structs.astuple, rows)), type=pa.struct(list(schema)))
    except (OverflowError, pa.ArrowException):
        return _columns_by_value(rows, schema)
    n = len(rows)
    quotes = np.zeros(n, dtype=np.int64)
    doubtful = np.zeros(n, dtype=bool)
    arrays = []
    for index, field in enumerate(schema):
        array = struct.field(index)
        kind = _PYTHON_TYPES[field.type]
        if kind is str:
            array, named = _text_column(array)
            quotes += named
        elif kind is float:
            array, named, inexact = _float_column(array)
            quotes += named
            doubtful |= inexact
        elif kind is int:  # None: not named (or named null, which then leaves two quotes uncounted)
            quotes += 2 * array.is_valid().to_numpy(zero_copy_only=False)
        else:  # flags: a list of strings; absent: the list of the one absent text
            values = array.flatten()
            absent = np.zeros(n, dtype=bool)
            absent[pc.list_parent_indices(array).to_numpy()[pc.fill_null(pc.equal(values, _ABSENT_TEXT), False).to_numpy(zero_copy_only=False)]] = True
            lengths = pc.fill_null(pc.list_value_length(array), 0).to_numpy(zero_copy_only=False)
            quotes += (2 + 2 * lengths) * ~absent
            if absent.any():
                array = pc.if_else(pa.array(absent), pa.scalar(None, field.type), array)
        arrays.append(array)
    return Columns(arrays, quotes, doubtful)


def _text_column(array: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """A text field's column (the absent marker made null) and the quotes each row's line
    spent on it: 2 for the key when named, 2 more for a string value (none for ``null``)."""
    absent = pc.fill_null(pc.equal(array, _ABSENT_TEXT), False)
    present = ~absent.to_numpy(zero_copy_only=False)
    quotes = 2 * present + 2 * (present & array.is_valid().to_numpy(zero_copy_only=False))
    if not present.all():
        array = pc.if_else(absent, pa.scalar(None, pa.string()), array)
    return array, quotes


def _float_column(array: pa.Array) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """A number field's column (the absent marker, NaN, made null), the quotes of its key per
    row, and the rows whose value is too large to be read the same by both decoders."""
    absent_values = pc.fill_null(pc.is_nan(array), False)
    absent = absent_values.to_numpy(zero_copy_only=False)
    quotes = 2 * ~absent
    if absent.any():
        array = pc.if_else(absent_values, pa.scalar(None, pa.float64()), array)
    numbers = array.to_numpy(zero_copy_only=False)  # null: NaN
    with np.errstate(invalid="ignore"):
        inexact = array.is_valid().to_numpy(zero_copy_only=False) & ~(np.abs(numbers) < _FLOAT_EXACT_BELOW)
    return array, quotes, inexact


def _columns_by_value(rows: list[Any], schema: pa.Schema) -> Columns:
    """:func:`_columns` value by value: an integer past 64 bits marks its row doubtful (the
    reference decoder refuses it) and its value null here."""
    n = len(rows)
    quotes = np.zeros(n, dtype=np.int64)
    doubtful = np.zeros(n, dtype=bool)
    values_by_field = zip(*map(msgspec.structs.astuple, rows), strict=True) if n else ([] for _ in schema)
    arrays = []
    for field, values in zip(schema, values_by_field, strict=True):
        kind = _PYTHON_TYPES[field.type]
        if kind is str:
            array, named = _text_column(pa.array(values, type=pa.string()))
            quotes += named
        elif kind is float:
            array, named, inexact = _float_column(pa.array(values, type=pa.float64()))
            quotes += named
            doubtful |= inexact
        elif kind is int:
            held = list(values)
            quotes += 2 * np.fromiter((v is not None for v in held), dtype=bool, count=n)
            try:
                array = pa.array(held, type=pa.int64())
            except (OverflowError, pa.ArrowException):
                wide = np.fromiter((v is not None and not _INT64_MIN <= v <= _INT64_MAX for v in held), dtype=bool, count=n)
                doubtful |= wide
                array = pa.array([None if w else v for v, w in zip(held, wide, strict=True)], type=pa.int64())
        else:  # flags: a list of strings
            absent = np.fromiter((v is _ABSENT_FLAGS for v in values), dtype=bool, count=n)
            lengths = np.fromiter((0 if v is None else len(v) for v in values), dtype=np.int64, count=n)
            quotes += (2 + 2 * lengths) * ~absent
            array = pa.array([None if a else v for v, a in zip(values, absent, strict=True)] if absent.any() else values,
                             type=field.type)
        arrays.append(array)
    return Columns(arrays, quotes, doubtful)


def decode_fast(lines: Sequence[bytes], schema: pa.Schema) -> tuple[Columns, list[int], list[int]]:
    """``(columns, kept, slow)``: the vouched-for lines as :class:`Columns`, ``kept[i]`` the
    index in ``lines`` of row ``i``, and ``slow`` the indices of every other line, for the
    reference decoder."""
    decode = _decoder(schema).decode
    rows: list[Any] = []
    kept: list[int] = []
    slow: list[int] = []
    line_quotes: list[int] = []
    for index, line in enumerate(lines):
        if _BACKSLASH in line:
            slow.append(index)
            continue
        try:
            rows.append(decode(line))
        except Exception:  # noqa: BLE001 - anything msgspec refuses is the reference decoder's to judge
            slow.append(index)
            continue
        kept.append(index)
        line_quotes.append(line.count(_QUOTE))
    columns = _columns(rows, schema)
    del rows
    drop = columns.doubtful | (np.array(line_quotes, dtype=np.int64) != columns.quotes)
    if drop.any():
        slow = sorted(slow + [kept[row] for row in np.flatnonzero(drop)])
        kept = [index for index, d in zip(kept, drop.tolist(), strict=True) if not d]
        columns = columns.without(drop)
    return columns, kept, slow


# -- whole messages ------------------------------------------------------------------------
_OPEN, _CLOSE, _NEWLINE = 0x7B, 0x7D, 0x0A
_MAX_VIEW_OFFSET = 2**31 - 1


@dataclass(slots=True)
class FastMessage:
    """A message whose every line the fast path vouched for: its index in the run, and the
    byte range and 1-based line number of each row it gave (blank lines give none)."""

    index: int
    payload: bytes
    starts: np.ndarray
    stops: np.ndarray
    numbers: np.ndarray


def _line_ranges(payload: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(starts, stops, line numbers) of the non-empty lines when each is exactly ``{…}``
    (first byte ``{``, last byte ``}``: no surrounding whitespace) and the message holds no
    backslash and fits 32-bit offsets; ``None`` otherwise (the message goes line by line).

    With every line starting with ``{`` no JSON value can run on from one line into the next
    (a value inside a container is followed by ``,``, ``}`` or ``]``, never ``{``; a string
    cannot hold a raw newline), so a whitespace-separated decode of the message that yields
    exactly one value per line read each line alone."""
    if _BACKSLASH in payload or len(payload) > _MAX_VIEW_OFFSET:
        return None
    data = np.frombuffer(payload, dtype=np.uint8)
    ends = np.flatnonzero(data == _NEWLINE)
    starts = np.concatenate(([0], ends + 1))
    stops = np.concatenate((ends, [data.size]))
    filled = stops > starts
    starts, stops = starts[filled], stops[filled]
    if starts.size == 0 or not ((data[starts] == _OPEN).all() and (data[stops - 1] == _CLOSE).all()):
        return None
    return starts, stops, np.flatnonzero(filled) + 1


def decode_messages_fast(payloads: Sequence[bytes], schema: pa.Schema) -> tuple[Columns, list[FastMessage], list[int]]:
    """``(columns, fast, slow)``: the rows of every message the fast path vouches for whole
    (in message order), those messages, and the indices of the others (for the line-by-line
    route, :func:`decode_fast` then the reference decoder). A message is vouched for when every
    line of it would be (see the module's docstring); one doubtful line sends its whole
    message line by line, where every other line of it still gets its own verdict."""
    decode_lines = _decoder(schema).decode_lines
    rows: list[Any] = []
    fast: list[FastMessage] = []
    slow: list[int] = []
    quotes: list[int] = []
    for index, payload in enumerate(payloads):
        ranges = _line_ranges(payload)
        if ranges is None:
            slow.append(index)
            continue
        try:
            items = decode_lines(payload)
        except Exception:  # noqa: BLE001 - the line-by-line route judges it
            slow.append(index)
            continue
        if len(items) != ranges[0].size:
            slow.append(index)
            continue
        rows.extend(items)
        fast.append(FastMessage(index, payload, *ranges))
        quotes.append(payload.count(_QUOTE))
    columns = _columns(rows, schema)
    del rows
    if not fast:
        return columns, fast, slow
    sizes = np.array([m.starts.size for m in fast])
    firsts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    expected = np.add.reduceat(columns.quotes, firsts)
    doubtful = (np.array(quotes, dtype=np.int64) != expected) | np.logical_or.reduceat(columns.doubtful, firsts)
    if doubtful.any():
        slow = sorted(slow + [fast[position].index for position in np.flatnonzero(doubtful)])
        fast = [message for message, d in zip(fast, doubtful.tolist(), strict=True) if not d]
        columns = columns.without(np.repeat(doubtful, sizes))
    return columns, fast, slow


def line_views(messages: Sequence[FastMessage]) -> pa.Array:
    """The lines of ``messages`` as one Arrow ``string_view`` array over the payloads' own
    bytes (no copy of any line: each view is 16 bytes naming its message and byte range)."""
    views = []
    for buffer_index, message in enumerate(messages):
        data = np.frombuffer(message.payload, dtype=np.uint8)
        lengths = (message.stops - message.starts).astype(np.int32)
        view = np.zeros((lengths.size, 4), dtype=np.int32)
        view[:, 0] = lengths
        long = lengths > 12
        starts = message.starts[long]
        view[long, 1] = data[starts[:, None] + np.arange(4)].copy().view(np.int32)[:, 0]
        view[long, 2] = buffer_index
        view[long, 3] = starts
        raw = view.view(np.uint8).reshape(lengths.size, 16)
        for row in np.flatnonzero(~long):  # a line of 12 bytes or fewer is held in its view
            start, length = int(message.starts[row]), int(lengths[row])
            raw[row, 4 : 4 + length] = data[start : start + length]
        views.append(raw)
    every = np.concatenate(views) if views else np.zeros((0, 16), dtype=np.uint8)
    buffers = [None, pa.py_buffer(every.tobytes()), *(pa.py_buffer(m.payload) for m in messages)]
    return pa.Array.from_buffers(pa.string_view(), every.shape[0], buffers)
