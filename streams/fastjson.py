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

Intent: most lines cost one C-level decode; strictness costs a count and a few comparisons.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np
import pyarrow as pa
from msgspec import UNSET, UnsetType

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_FLOAT_EXACT_BELOW = 2.0**53
_QUOTE = b'"'
_BACKSLASH = b"\\"

_DECODERS: dict[tuple[str, ...], tuple[msgspec.json.Decoder, Any]] = {}


def _decoder(fields: Mapping[str, tuple[tuple[type, ...], bool]]) -> tuple[msgspec.json.Decoder, Any]:
    names = tuple(fields)
    if names not in _DECODERS:
        kinds = {int: int, str: str, float: float, list: list[str]}
        struct = msgspec.defstruct(
            "WireEvent",
            [(name, kinds[types[0]] | None | UnsetType, UNSET) for name, (types, _) in fields.items()],
            gc=False,
        )
        _DECODERS[names] = (msgspec.json.Decoder(struct), msgspec.structs.astuple)
    return _DECODERS[names]


def decode_fast(
    lines: Sequence[bytes], fields: Mapping[str, tuple[tuple[type, ...], bool]]
) -> tuple[dict[str, list[Any]], list[int], list[int]]:
    """``(columns, kept, slow)``: the values of the vouched-for lines by field (``None`` where
    a field is absent or null; floats as floats), ``kept[i]`` the index in ``lines`` of row
    ``i``, and ``slow`` the indices of every other line, for the reference decoder."""
    decode, astuple = _decoder(fields)
    decode = decode.decode
    rows: list[Any] = []
    kept: list[int] = []
    slow: list[int] = []
    quotes = 0
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
        quotes += line.count(_QUOTE)
    names = list(fields)
    if not rows:
        return {name: [] for name in names}, [], slow
    columns = dict(zip(names, (list(c) for c in zip(*map(astuple, rows), strict=True)), strict=True))
    del rows
    if quotes != _quotes_decoded(columns, fields):
        doubtful = _rows_with_other_quotes(lines, kept, columns, fields)
        columns, kept, slow = _move_to_slow(columns, kept, slow, doubtful)
    for name, values in columns.items():
        if UNSET in values:  # identity first: cheap when absent
            columns[name] = [None if v is UNSET else v for v in values]
    doubtful = set()
    for name, (types, _) in fields.items():
        if types[0] is int:
            doubtful.update(_ints_past_64_bits(columns[name]))
        elif types[0] is float:
            doubtful.update(_floats_not_exact(columns[name]))
    if doubtful:
        columns, kept, slow = _move_to_slow(columns, kept, slow, doubtful)
    return columns, kept, slow


def _quotes_decoded(columns: dict[str, list[Any]], fields: Mapping[str, tuple[tuple[type, ...], bool]]) -> int:
    """Two quotes per key read and per string value read, over all rows."""
    total = 0
    for name, values in columns.items():
        absent = values.count(UNSET)
        total += len(values) - absent  # keys
        kind = fields[name][0][0]
        if kind is str:
            total += len(values) - absent - values.count(None)
        elif kind is list:
            total += sum(len(v) for v in values if v is not UNSET and v is not None)
    return 2 * total


def _rows_with_other_quotes(
    lines: Sequence[bytes], kept: list[int], columns: dict[str, list[Any]], fields: Mapping[str, tuple[tuple[type, ...], bool]]
) -> set[int]:
    """Rows (positions in ``kept``) whose line holds more quotes than its keys and strings."""
    expected = np.zeros(len(kept), dtype=np.int64)
    for name, values in columns.items():
        kind = fields[name][0][0]
        for row, value in enumerate(values):
            if value is UNSET:
                continue
            expected[row] += 2
            if kind is str and value is not None:
                expected[row] += 2
            elif kind is list and value is not None:
                expected[row] += 2 * len(value)
    return {row for row, index in enumerate(kept) if lines[index].count(_QUOTE) != expected[row]}


def _ints_past_64_bits(values: list[Any]) -> list[int]:
    try:
        pa.array(values, type=pa.int64())
        return []
    except (OverflowError, pa.ArrowException):
        return [row for row, v in enumerate(values) if v is not None and not _INT64_MIN <= v <= _INT64_MAX]


def _floats_not_exact(values: list[Any]) -> list[int]:
    array = pa.array(values, type=pa.float64()).to_numpy(zero_copy_only=False)  # null: NaN
    with np.errstate(invalid="ignore"):
        wrong = ~(np.abs(array) < _FLOAT_EXACT_BELOW)
    if not wrong.any():
        return []
    return [int(row) for row in np.flatnonzero(wrong) if values[row] is not None]


def _move_to_slow(
    columns: dict[str, list[Any]], kept: list[int], slow: list[int], rows: set[int]
) -> tuple[dict[str, list[Any]], list[int], list[int]]:
    keep = [row not in rows for row in range(len(kept))]
    columns = {name: [v for v, k in zip(values, keep, strict=True) if k] for name, values in columns.items()}
    slow = sorted(slow + [kept[row] for row in rows])
    kept = [index for index, k in zip(kept, keep, strict=True) if k]
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


def decode_messages_fast(
    payloads: Sequence[bytes], fields: Mapping[str, tuple[tuple[type, ...], bool]]
) -> tuple[dict[str, list[Any]], list[FastMessage], list[int]]:
    """``(columns, fast, slow)``: the rows of every message the fast path vouches for whole
    (in message order), those messages, and the indices of the others (for the line-by-line
    route, :func:`decode_fast` then the reference decoder). A message is vouched for when every
    line of it would be (see the module's docstring); one doubtful line sends its whole
    message line by line, where every other line of it still gets its own verdict."""
    decoder, astuple = _decoder(fields)
    decode_lines = decoder.decode_lines
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
    names = list(fields)
    if not rows:
        return {name: [] for name in names}, [], slow
    columns = dict(zip(names, (list(c) for c in zip(*map(astuple, rows), strict=True)), strict=True))
    del rows
    doubtful: set[int] = set()  # positions in ``fast``
    if sum(quotes) != _quotes_decoded(columns, fields):
        first = 0
        for position, message in enumerate(fast):
            last = first + message.starts.size
            part = {name: values[first:last] for name, values in columns.items()}
            if quotes[position] != _quotes_decoded(part, fields):
                doubtful.add(position)
            first = last
    for name, values in columns.items():
        if UNSET in values:
            columns[name] = [None if v is UNSET else v for v in values]
    bad_rows: set[int] = set()
    for name, (types, _) in fields.items():
        if types[0] is int:
            bad_rows.update(_ints_past_64_bits(columns[name]))
        elif types[0] is float:
            bad_rows.update(_floats_not_exact(columns[name]))
    if bad_rows:
        owner = np.repeat(np.arange(len(fast)), [m.starts.size for m in fast])
        doubtful.update(int(owner[row]) for row in bad_rows)
    if doubtful:
        keep = np.repeat([position not in doubtful for position in range(len(fast))], [m.starts.size for m in fast]).tolist()
        columns = {name: [v for v, k in zip(values, keep, strict=True) if k] for name, values in columns.items()}
        slow = sorted(slow + [fast[position].index for position in doubtful])
        fast = [message for position, message in enumerate(fast) if position not in doubtful]
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
