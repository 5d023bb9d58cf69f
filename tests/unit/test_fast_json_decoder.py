"""The strict JSON decoder's fast path (``streams.fastjson``) gives every line exactly the
verdict and the row of the reference decoder (``decode_json_lines_reference``), and takes the
ordinary lines itself (else it would be correct but not fast)."""

from __future__ import annotations

import json
import math

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from spine_events import event
from test_hostile_corpus import CORPUS, EVENT_LINES, good_lines, hostile_lines

from streams.fastjson import decode_fast
from streams.jsonlines import decode_json_lines, decode_json_lines_reference
from streams.schema import FIELDS
from streams.wire import ARROW_WIRE_SCHEMA

pytestmark = pytest.mark.unit


def same_as_reference(lines: list[bytes]) -> None:
    table, kept, refused = decode_json_lines(lines)
    ref_table, ref_kept, ref_refused = decode_json_lines_reference(lines)
    assert (kept, refused) == (ref_kept, ref_refused)
    assert table.schema == ref_table.schema
    # equal values, NaN equal to NaN, -0.0 told from 0.0
    for name in table.column_names:
        ours, theirs = table.column(name).to_pylist(), ref_table.column(name).to_pylist()
        assert [_key(v) for v in ours] == [_key(v) for v in theirs], name


def _key(value: object) -> object:
    if isinstance(value, float):
        return ("float", math.copysign(1.0, value), repr(value))
    return value


def test_the_hostile_corpus_line_by_line_and_as_one_run() -> None:
    lines = [line for _, line, _ in EVENT_LINES]
    for line in lines:
        same_as_reference([line])
    same_as_reference(lines)
    same_as_reference([*good_lines(50), *lines, *good_lines(50, node="good-2")])
    assert len(CORPUS) > 50


def test_ordinary_lines_take_the_fast_path() -> None:
    """A run of valid events (nulls, empty flags, MIG fields, non-ASCII text included) is
    decoded without the reference decoder."""
    lines = good_lines(200)
    lines.append(json.dumps(event("2026-11-10T05:00:00Z", job_id=None, energy_joules=None, site="대전"), ensure_ascii=False).encode())
    lines.append(json.dumps(event("2026-11-10T05:01:00Z", flags=["partial_interval", "gpu_lost"])).encode())
    _, kept, slow = decode_fast(lines, ARROW_WIRE_SCHEMA)
    assert (len(kept), slow) == (len(lines), [])
    same_as_reference(lines)


@pytest.mark.parametrize(
    "line",
    [
        b'{"samples": 1, "samples": 2, "schema_version": 1}',  # a key twice, numbers only
        b'{"site": "a", "site": "a"}',
        b'{"site": "a", "other": {"x": 1, "x": 2}}',  # unknown key, duplicate inside it
        b'{"site": "a", "other": NaN}',
        b'{"samples": 9223372036854775808}',
        b'{"samples": -9223372036854775809}',
        b'{"gpu_seconds": 9007199254740993}',
        b'{"gpu_seconds": 1e400}',
        b'{"gpu_seconds": -Infinity}',
        b'\xef\xbb\xbf{"site": "a"}',
        '{"site": "a"}'.encode("utf-16-le"),
        b'{"site": "\\u0061"}',
        b'{"sit\\u0065": "a"}',
        b'{"site": "\\ud800"}',
        b'{"site": "a\\"b"}',
        b'{"site": "\xed\xa0\x80"}',
        b'{"site": "a\x01"}',
        b'\x0c{"site": "a"}',
        b'{"flags": ["a", null]}',
        b'{"flags": "a"}',
        b'{"samples": true}',
        b'{"samples": 1.0}',
        b'[{"site": "a"}]',
        b'{"site": "a"} {"site": "b"}',
        b'{"site": "a"},{"site": "b"}',
    ],
)
def test_each_doubtful_shape_gets_the_reference_verdict(line: bytes) -> None:
    same_as_reference([line])
    same_as_reference([*good_lines(3), line, *good_lines(3, node="good-2")])


_FLOATS = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(2**80), 2**80)


@st.composite
def wire_lines(draw: st.DrawFn) -> bytes:
    """Valid-looking events with keys dropped, nulled, doubled, added, floats of any size,
    integers past 64 bits, escapes, byte order marks and other encodings."""
    obj = event(f"2026-11-04T00:{draw(st.integers(0, 59)):02d}:00Z")
    pairs = list(obj.items())
    for name in draw(st.lists(st.sampled_from(list(FIELDS)), max_size=3, unique=True)):
        kind = FIELDS[name][0][0]
        value = draw(
            st.sampled_from([None, "x", 1, 1.5, True, [], ["a"], {"k": 1}])
            | (_FLOATS if kind is float else st.integers(-(2**70), 2**70) if kind is int else st.text(max_size=5))
        )
        action = draw(st.sampled_from(["set", "drop", "double"]))
        if action == "set":
            pairs = [(k, value if k == name else v) for k, v in pairs]
        elif action == "drop":
            pairs = [(k, v) for k, v in pairs if k != name]
        else:
            pairs.insert(draw(st.integers(0, len(pairs))), (name, value))
    if draw(st.booleans()):
        pairs.insert(draw(st.integers(0, len(pairs))), (draw(st.text(max_size=6)), draw(st.sampled_from([1, "y", None, {"a": [1]}]))))
    separators = draw(st.sampled_from([(", ", ": "), (",", ":"), (" ,\t", " :\r")]))
    text = "{" + separators[0].join(json.dumps(k) + separators[1] + json.dumps(v, ensure_ascii=draw(st.booleans())) for k, v in pairs) + "}"
    encoding = draw(st.sampled_from(["utf-8"] * 8 + ["utf-8-sig", "utf-16", "latin-1"]))
    return text.encode(encoding, "surrogatepass" if encoding.startswith("utf") else "replace").replace(b"\n", b" ")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(wire_lines() | hostile_lines(), min_size=1, max_size=8))
def test_any_run_of_lines_decodes_as_the_reference_does(lines: list[bytes]) -> None:
    lines = [line for line in lines if line.strip(b" \t\r")]
    same_as_reference(lines)


def test_a_table_of_no_lines() -> None:
    table, kept, refused = decode_json_lines([])
    assert (table.num_rows, kept, refused) == (0, [], [])
    assert isinstance(table, pa.Table)


# --- whole messages: one decode per message, each line still judged alone ------------------


def messages_as_reference(payloads: list[bytes]) -> None:
    """decode_json_messages equals splitting every message into lines and judging each line
    with the reference decoder."""
    from streams.jsonlines import decode_json_messages

    table, message, number, refused = decode_json_messages(payloads)
    lines, where = [], []
    for index, payload in enumerate(payloads):
        for line_number, line in enumerate(payload.split(b"\n"), start=1):
            if line.strip(b" \t\r"):
                lines.append(line)
                where.append((index, line_number))
    ref_table, ref_kept, ref_refused = decode_json_lines_reference(lines)
    assert list(zip(message.tolist(), number.tolist(), strict=True)) == [where[i] for i in ref_kept]
    assert [(m, n, line, code, why) for m, n, line, code, why in refused] == [
        (*where[i], lines[i], code, why) for i, code, why in ref_refused
    ]
    table = table.set_column(table.num_columns - 1, "_raw", table.column("_raw").cast(pa.string()))
    for name in ref_table.column_names:
        ours, theirs = table.column(name).to_pylist(), ref_table.column(name).to_pylist()
        assert [_key(v) for v in ours] == [_key(v) for v in theirs], name


def test_a_clean_message_is_decoded_whole_and_its_lines_are_views() -> None:
    from streams.fastjson import decode_messages_fast

    payload = b"\n".join(good_lines(30)) + b"\n\n"
    _, fast, slow = decode_messages_fast([payload, payload], ARROW_WIRE_SCHEMA)
    assert (len(fast), slow) == (2, [])
    messages_as_reference([payload, payload])


@pytest.mark.parametrize(
    "payload",
    [
        b'{"site": "a"} {"site": "b"}\n{"site": "c"}',  # two values on one line
        b'{"site": {}\n{"x": 1}}',  # a value would run on into the next line
        b'{"site": "a"}\r\n{"site": "b"}\r\n',
        b'{"site": "a"}\n   \n\t\n{"site": "b"}',
        b' {"site": "a"}\n{"site": "b"} ',
        b'{"site": "a",\n"node": "b"}',
        b'{"site":\n"a"}\n{"site": "b"} {"site": "c"}',  # as many values as lines, not one per line
        b'{"site": "a"}\n[1]\n{"site": "b"}',
        b'{"samples": 1, "samples": 2}\n{"site": "b"}',
        b'{"samples": 99999999999999999999}\n{"site": "b"}',
        b"\n\n",
        b"",
    ],
)
def test_a_message_that_is_not_plainly_one_object_per_line_gets_each_lines_own_verdict(payload: bytes) -> None:
    messages_as_reference([payload])
    messages_as_reference([b"\n".join(good_lines(3)), payload, b"\n".join(good_lines(2, node="good-2"))])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    messages=st.lists(
        st.lists(wire_lines() | hostile_lines() | st.sampled_from([b"", b" ", b"{", b"}", b'{"a": {}', b'"x"}']), max_size=6),
        min_size=1,
        max_size=4,
    ),
    good=st.integers(0, 3),
)
def test_any_messages_decode_as_their_lines_do_alone(messages: list[list[bytes]], good: int) -> None:
    payloads = [b"\n".join([*good_lines(good), *lines]) for lines in messages]
    messages_as_reference(payloads)


def _full_event(**changes: object) -> dict[str, object]:
    obj = event("2026-11-10T06:00:00Z")
    assert set(obj) == set(FIELDS)  # every field named: the counts below are exact
    obj.update(changes)
    return obj


def _line(pairs: list[tuple[str, object]]) -> bytes:
    return ("{" + ",".join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in pairs) + "}").encode()


def _without(name: str) -> list[tuple[str, object]]:
    return [(k, v) for k, v in _full_event().items() if k != name]


@pytest.mark.parametrize(
    ("line", "fast"),
    [
        # an integer field not named, another named twice: as many keys as a full event
        (_line([*_without("samples"), ("expected_samples", 60)]), False),
        (_line([*_without("schema_version"), ("samples", 1)]), False),
        # flags not named, a number named twice
        (_line([*_without("flags"), ("samples", 1)]), False),
        # a text field not named, another named twice with a text
        (_line([*_without("job_id"), ("site", "a")]), False),
        # an integer field named as null (absent and null are one value there: the reference decides)
        (_line(list(_full_event(samples=None).items())), False),
        # the ordinary shapes the struct path must keep
        (_line(list(_full_event(flags=[]).items())), True),
        (_line(_without("flags")), True),
        (_line(_without("samples")), True),
        (_line(_without("job_id")), True),
        (_line(list(_full_event(job_id=None, mig_profile=None, energy_joules=None).items())), True),
    ],
)
def test_the_quote_count_sees_each_absent_field_for_what_it_is(line: bytes, fast: bool) -> None:
    """Absent fields are told apart from named ones (NUL text, NaN, a list of the NUL text;
    integers by ``None``, a null integer counted as absent), so an absent field can never hide
    a key named twice; the boundary of the fast path, line by line and in a message."""
    _, kept, slow = decode_fast([line], ARROW_WIRE_SCHEMA)
    assert (kept == [0]) is fast and (slow == [0]) is not fast
    same_as_reference([line])
    same_as_reference([*good_lines(3), line, *good_lines(3, node="good-2")])
    from streams.fastjson import decode_messages_fast

    _, whole, _ = decode_messages_fast([b"\n".join([*good_lines(2), line])], ARROW_WIRE_SCHEMA)
    assert bool(whole) is fast


def test_an_integer_past_64_bits_sends_its_line_alone_to_the_reference() -> None:
    """The struct conversion refuses it; the value-by-value route marks that row only."""
    wide = _line(list(_full_event(samples=2**64 + 1).items()))
    lines = [*good_lines(3), wide, *good_lines(3, node="good-2")]
    _, kept, slow = decode_fast(lines, ARROW_WIRE_SCHEMA)
    assert (kept, slow) == ([0, 1, 2, 4, 5, 6], [3])
    same_as_reference(lines)
