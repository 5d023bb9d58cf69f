"""Hostile input (issue 12): every line gets one verdict, whatever surrounds it, and nothing
a line holds can stop a batch, lose an event or count one twice.

The corpus is ``tests/fixtures/hostile/corpus.jsonl`` with its verdicts in ``expected.tsv``
(written by ``make_corpus.py`` beside them). It runs alone and mixed into good traffic, on
both wire formats, through :class:`~streams.pipeline.BatchProcessor`, with the counts
reconciled and the accepted GPU-microseconds summed exactly.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import random
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from spine_events import ACCOUNTS, event

from gpuledger.ingest import ingest_file
from storage.dataset import Store
from storage.rollup import rolled_up
from streams.jsonlines import decode_json_lines
from streams.pipeline import BatchProcessor
from streams.schema import FIELDS, make_event_id, to_microseconds
from streams.validate import check_rules, decode_messages
from streams.wire import encode_arrow, payload_of_raw

pytestmark = pytest.mark.unit

HOSTILE = Path(__file__).resolve().parents[1] / "fixtures" / "hostile"
CLOCK = datetime(2026, 12, 1, tzinfo=UTC)  # the consumer's clock the corpus is judged at
RULES = dataclasses.replace(
    ACCOUNTS, gpu_models=frozenset({"NVIDIA B200", "NVIDIA H100 80GB HBM3"}), clock=lambda: CLOCK
)
MALFORMED = b"{not json"


def corpus() -> list[tuple[str, bytes, str]]:
    """``(name, line, verdict)`` per line of the checked-in corpus."""
    lines = (HOSTILE / "corpus.jsonl").read_bytes().split(b"\n")[:-1]
    rows = [row.split("\t") for row in (HOSTILE / "expected.tsv").read_text().splitlines()[1:]]
    assert len(rows) == len(lines)
    return [(name, line, verdict) for (_, name, verdict), line in zip(rows, lines, strict=True)]


CORPUS = corpus()
EVENT_LINES = [(name, line, verdict) for name, line, verdict in CORPUS if verdict != "blank"]


def good_lines(count: int, node: str = "good-1") -> list[bytes]:
    """Valid events of their own node, one per minute of 2026-11-10, gpu_seconds varied."""
    return [
        json.dumps(
            event(f"2026-11-10T{m // 60:02d}:{m % 60:02d}:00Z", node=node, gpu_seconds=(m % 60) + 0.123457, busy_gpu_seconds=0.0)
        ).encode()
        for m in range(count)
    ]


def verdict_in(messages: list[tuple[str, bytes]], source: str) -> tuple[str, str | None] | None:
    """The verdict of the line or row at ``source`` (``valid`` or a reason code, and the sentence)."""
    frame, early = decode_messages(messages)
    for refused in early:
        if refused.source == source:
            return str(refused.reason_code), refused.reason
    row = check_rules(frame, RULES).filter(pl.col("_source") == source)
    if row.height == 0:
        return None
    return row["reason_code"][0] or "valid", row["reason"][0]


def arrow_message(lines: list[bytes]) -> bytes:
    """Lines the decoder reads, as one Arrow IPC message (what ``ingest`` sends)."""
    table, kept, refused = decode_json_lines(lines)
    assert not refused and len(kept) == len(lines)
    return encode_arrow(table)


def decodes(line: bytes) -> bool:
    return not decode_json_lines([line])[2]


def test_the_checked_in_corpus_is_what_its_generator_writes() -> None:
    spec = importlib.util.spec_from_file_location("make_corpus", HOSTILE / "make_corpus.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert [(n, line, v) for n, line, v in module.cases()] == CORPUS
    assert module.CLOCK == CLOCK


@pytest.mark.parametrize(("name", "line", "verdict"), CORPUS, ids=[name for name, _, _ in CORPUS])
def test_each_hostile_line_alone_gets_its_verdict_and_names_why(name: str, line: bytes, verdict: str) -> None:
    got = verdict_in([("m", line)], "m#1")
    if verdict == "blank":
        assert got is None
        assert decode_messages([("m", line)])[1] == []
        return
    assert got is not None
    code, reason = got
    assert code == ("valid" if verdict == "duplicate" else verdict)
    assert (reason is None) == (code == "valid")
    good = good_lines(2)
    assert verdict_in([("m", b"\n".join([MALFORMED, line, *good]))], "m#2") == got
    if decodes(line):
        assert verdict_in([("j", MALFORMED), ("a", arrow_message([good[0], line, good[1]]))], "a#2") == got


def test_the_whole_corpus_in_one_message_gets_the_same_verdicts() -> None:
    payload = b"\n".join(line for _, line, _ in CORPUS)
    frame, early = decode_messages([("m", payload)])
    checked = check_rules(frame, RULES)
    got = {r.source: str(r.reason_code) for r in early}
    got |= {s: c or "valid" for s, c in checked.select("_source", "reason_code").iter_rows()}
    expected = {
        f"m#{n}": "valid" if verdict == "duplicate" else verdict
        for n, (_, _, verdict) in enumerate(CORPUS, start=1)
        if verdict != "blank"
    }
    assert got == expected


def messages_of(lines: list[bytes], wire: str, rng: random.Random, prefix: str) -> list[tuple[str, bytes]]:
    """Lines in order as messages of 1-40 lines; on ``arrow``, each run of lines the decoder
    reads is an Arrow batch and each other line a JSON message of its own."""
    messages: list[tuple[str, bytes]] = []
    at = 0
    while at < len(lines):
        size = rng.randint(1, 40)
        chunk = lines[at : at + size]
        at += size
        if wire == "json":
            messages.append((f"{prefix}{len(messages)}", b"\n".join(chunk)))
            continue
        run: list[bytes] = []
        for line in chunk + [None]:
            if line is not None and line.strip(b" \t\r") and decodes(line):
                run.append(line)
                continue
            if run:
                messages.append((f"{prefix}{len(messages)}", arrow_message(run)))
                run = []
            if line is not None:
                messages.append((f"{prefix}{len(messages)}", line))
    return messages


@pytest.mark.parametrize("wire", ["json", "arrow"])
@pytest.mark.parametrize("traffic", ["alone", "mixed"])
def test_corpus_through_the_pipeline_reconciles_and_bills_exactly(tmp_path: Path, wire: str, traffic: str) -> None:
    rng = random.Random(f"{wire}-{traffic}")
    lines = [line for _, line, _ in CORPUS]
    verdicts = [verdict for _, _, verdict in CORPUS]
    if traffic == "mixed":
        good = good_lines(400)
        lines, verdicts = lines + good, verdicts + ["valid"] * len(good)
        order = list(range(len(lines)))
        rng.shuffle(order)
        # the re-send must come after the line it repeats, or the repeat is the one kept
        first, resend = (i for i, (_, _, v) in enumerate(CORPUS) if v in ("valid", "duplicate") and CORPUS[i][1] == CORPUS[0][1])
        if order.index(resend) < order.index(first):
            a, b = order.index(resend), order.index(first)
            order[a], order[b] = order[b], order[a]
        lines, verdicts = [lines[i] for i in order], [verdicts[i] for i in order]
    messages = messages_of(lines, wire, rng, "t/0@")
    store = Store(tmp_path)
    processor = BatchProcessor(store, RULES)
    cut = len(messages) // 2  # two batches: a re-send may meet its first copy in an earlier batch
    results = [processor.process(messages[:cut]), processor.process(messages[cut:])]

    events = [v for v in verdicts if v != "blank"]
    accepted = sum(r.accepted for r in results)
    refused = sum(r.refused for r in results)
    duplicates = sum(r.duplicates for r in results)
    assert accepted + refused + duplicates == len(events)
    assert (accepted, duplicates) == (events.count("valid"), events.count("duplicate"))

    valid = {json.loads(line)["event_id"]: json.loads(line) for line, v in zip(lines, verdicts, strict=True) if v == "valid"}
    raw = pl.read_parquet(store.files("raw"))
    assert sorted(raw["event_id"]) == sorted(valid)
    assert raw["gpu_microseconds"].sum() == sum(to_microseconds(e["gpu_seconds"]) for e in valid.values())
    hourly = pl.read_parquet(rolled_up(store).files("usage_hourly"))
    assert hourly["gpu_microseconds"].sum() == raw["gpu_microseconds"].sum()

    quarantine = pl.read_parquet(store.files("quarantine"))
    refusals = [v for v in events if v not in ("valid", "duplicate")]
    assert Counter(quarantine["reason_code"]) == Counter(refusals)
    if wire == "json":  # each refused line is kept as its own bytes
        kept = sorted(payload_of_raw(raw_text) for raw_text in quarantine["raw"])
        assert kept == sorted(line for line, v in zip(lines, verdicts, strict=True) if v in refusals)


class CapturingProducer:
    """In-memory twin of ``streams.bus.Producer``: keeps what was sent, in order."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    def send(self, key: str, value: bytes) -> None:
        self.sent.append((key, value))

    def flush(self, timeout_s: float | None = None) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.mark.parametrize("wire", ["json", "arrow"])
def test_ingest_predicts_exactly_what_the_consumer_refuses(tmp_path: Path, wire: str) -> None:
    lines = [line for _, line, _ in CORPUS] + good_lines(50, node="hostile-1") + good_lines(50, node="good-2")
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    producer = CapturingProducer()
    report = ingest_file(path, producer, RULES, lines_per_message=17, wire=wire)
    store = Store(tmp_path / "data")
    result = BatchProcessor(store, RULES).process([(f"t/0@{i}", value) for i, (_, value) in enumerate(producer.sent)])
    assert report.lines == result.accepted + result.refused + result.duplicates
    assert report.refused == result.refused
    assert report.valid == result.accepted + result.duplicates
    assert report.refusals == dict(Counter(pl.read_parquet(store.files("quarantine"))["reason_code"]))
    if wire == "arrow":  # every chunk of lines the decoder reads went as Arrow
        assert any(value[:4] == b"\xff\xff\xff\xff" for _, value in producer.sent)


# --- the property: a line's verdict is its own ------------------------------------------

_ANY_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**80), 2**80)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)
_NEAR_VALID = {
    "interval_start": st.sampled_from(
        ["2026-11-20T22:59:60Z", "0000-01-01T00:00:00Z", "2026-11-04T00:00:00.5Z", "2026-11-04T09:00:00+09:00",
         "2026-11-04T00:00:30Z", "2026-12-02T00:00:00Z", "2024-12-31T23:59:00Z", "2026-11-04t00:00:00z"]
    ),
    "interval_end": st.sampled_from(["2026-11-04T00:00:00Z", "2026-11-04T01:00:00Z", "9999-12-31T23:59:00Z"]),
    "gpu_model": st.sampled_from(["NVIDIA A100", "NVIDIA B200 ", "NVIDIA H100 80GB HBM3", ""]),
    "samples": st.sampled_from([2**31, 2**40, 2**70, -1, 0, 7]),
    "expected_samples": st.sampled_from([2**31 - 1, 2**31, 0, -(2**63)]),
    "schema_version": st.sampled_from([2, 2**70, 1.0]),
    "gpu_fraction": st.sampled_from([0.5, 1.5, 0.0, float("nan")]),
    "gpu_seconds": st.sampled_from([61.0, -1.0, float("nan"), float("inf"), 10**400, 60, 0]),
    "busy_gpu_seconds": st.sampled_from([61.0, -0.0, float("nan")]),
    "energy_joules": st.sampled_from([float("inf"), float("-inf"), float("nan"), -1.0, None, 1e308]),
    "flags": st.sampled_from([[None], ["x\u0000"], ["partial_interval"], [], [1], "x"]),
    "entity": st.sampled_from(["samsung", "acme", "gov", 5]),
    "project": st.sampled_from(["unattributed", "skt-ax", "moonshot"]),
    "job_id": st.sampled_from([123, None, "k8s:ns/pod", "\u0000"]),
    "mig_profile": st.sampled_from([1.5, "3g.90gb", None]),
    "device_uuid": st.sampled_from(["MIG-1", "GPU-0002", "0"]),
    "site": st.sampled_from(["dc\u001f", "x" * 1100, "대전", "dc\ud800"]),
}


@st.composite
def hostile_lines(draw: st.DrawFn) -> bytes:
    """A line near schema v1: a valid event with some fields replaced, maybe re-hashed, then
    maybe damaged as text or bytes."""
    obj = event(f"2026-11-04T00:{draw(st.integers(0, 59)):02d}:00Z", node=draw(st.sampled_from(["p1", "p2"])))
    for name in draw(st.lists(st.sampled_from(list(FIELDS)), max_size=3, unique=True)):
        strategy = _NEAR_VALID.get(name)
        obj[name] = draw(strategy if strategy is not None and draw(st.integers(0, 3)) else _ANY_JSON)
    if draw(st.integers(0, 3)) and all(isinstance(obj.get(k), str) for k in ("node", "device_uuid", "interval_start")):
        obj["event_id"] = make_event_id(obj["node"], obj["device_uuid"], obj["interval_start"])
    text = json.dumps(obj, ensure_ascii=draw(st.booleans()))  # NaN and Infinity as JSON's extensions
    damage = draw(st.sampled_from(["none"] * 6 + ["duplicate", "cut", "byte", "latin1", "utf16"]))
    if damage == "duplicate":
        key = draw(st.sampled_from(list(FIELDS)))
        text = "{" + json.dumps(key) + ":" + json.dumps(draw(_ANY_JSON)) + "," + text[1:]
    line = text.encode("utf-8", "surrogatepass")
    if damage == "cut":
        line = line[: draw(st.integers(0, len(line)))]
    elif damage == "byte":
        at = draw(st.integers(0, len(line)))
        line = line[:at] + bytes([draw(st.integers(0, 255).filter(lambda b: b != 0x0A))]) + line[at:]
    elif damage == "latin1":
        line = text.encode("latin-1", "replace")
    elif damage == "utf16":
        line = text.encode("utf-16-le", "surrogatepass").replace(b"\n", b" ")
    return line


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(line=hostile_lines(), before=st.integers(0, 3), after=st.integers(0, 3))
def test_a_line_gets_the_same_verdict_alone_and_in_any_message_on_either_wire(line: bytes, before: int, after: int) -> None:
    good = good_lines(before + after)
    alone = verdict_in([("m", line)], "m#1")
    if not line.strip(b" \t\r"):
        assert alone is None
        return
    assert alone is not None
    among_good = [("m", b"\n".join([*good[:before], line, *good[before:]]))]
    assert verdict_in(among_good, f"m#{before + 1}") == alone
    beside_malformed = [("m", b"\n".join([MALFORMED, line, MALFORMED]))]
    assert verdict_in(beside_malformed, "m#2") == alone
    if decodes(line):  # what the decoder reads can travel as Arrow: the same verdict there
        arrow = [("a", arrow_message([*good[:before], line, *good[before:]])), ("j", MALFORMED)]
        assert verdict_in(arrow, f"a#{before + 1}") == alone


# --- Arrow batches carry typed values the JSON decoder never makes -----------------------


def arrow_of_rows(rows: list[dict]) -> bytes:
    import pyarrow as pa

    from streams.wire import ARROW_WIRE_SCHEMA

    return encode_arrow(pa.Table.from_pylist(rows, schema=ARROW_WIRE_SCHEMA))


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"samples": 2**40, "expected_samples": 2**40}, "bad_samples"),
        ({"samples": -(2**63), "expected_samples": 2**63 - 1}, "bad_samples"),
        ({"schema_version": 2**63 - 1}, "bad_schema_version"),
        ({"energy_joules": float("inf")}, "bad_energy"),
        ({"energy_joules": float("nan")}, "bad_energy"),
        ({"gpu_seconds": float("nan")}, "bad_duration"),
        ({"gpu_seconds": -float("inf")}, "bad_duration"),
        ({"busy_gpu_seconds": float("nan")}, "bad_busy"),
        ({"flags": ["partial_interval", None]}, "wrong_type"),
        ({"site": "dc\x00"}, "bad_text"),
        ({"job_id": "j" * 1025}, "bad_text"),
        ({"interval_start": "2026-11-20T22:59:60Z"}, "bad_timestamp"),
        ({"gpu_model": "NVIDIA A100"}, "unknown_gpu_model"),
    ],
)
def test_typed_values_out_of_range_in_an_arrow_batch_are_refused_by_the_same_rules(tmp_path: Path, change: dict, code: str) -> None:
    good = [event(f"2026-11-11T00:{m:02d}:00Z", node="arrow-1") for m in range(3)]
    bad = event("2026-11-11T00:59:00Z", node="arrow-1") | change
    result = BatchProcessor(Store(tmp_path), RULES).process([("a", arrow_of_rows([good[0], bad, *good[1:]]))])
    assert (result.accepted, result.refused) == (3, 1)
    assert [str(r.reason_code) for r in result.refused_lines] == [code]


def test_an_arrow_batch_whose_strings_are_not_utf8_is_refused_whole_not_raised(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.ipc as ipc

    from streams.wire import ARROW_WIRE_SCHEMA

    table = pa.Table.from_pylist([event("2026-11-11T01:00:00Z", node="arrow-2")], schema=ARROW_WIRE_SCHEMA)
    site = table.column("site").chunk(0)
    forged = pa.Array.from_buffers(pa.string(), 1, [None, site.buffers()[1], pa.py_buffer(b"d\xff1")])
    table = table.set_column(table.schema.get_field_index("site"), "site", forged)
    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    payload = sink.getvalue().to_pybytes()
    good = json.dumps(event("2026-11-11T01:01:00Z", node="arrow-2")).encode()
    result = BatchProcessor(Store(tmp_path), RULES).process([("a", payload), ("j", good)])
    assert (result.accepted, result.refused) == (1, 1)
    [refused] = result.refused_lines
    assert refused.reason_code == "bad_arrow_batch" and "UTF8" in refused.reason.upper().replace("-", "")
    assert payload_of_raw(refused.raw) == payload


def test_the_registry_wiring_refuses_a_model_no_rate_card_prices(tmp_path: Path) -> None:
    from accounting.registry import load_registry
    from gpuledger.wiring import accounts_of

    registry = load_registry(Path(__file__).resolve().parents[2] / "examples" / "registry.toml")
    accounts = accounts_of(registry, clock=lambda: CLOCK)
    assert accounts.gpu_models == {"NVIDIA B200", "NVIDIA GB200", "NVIDIA H100 80GB HBM3"}
    assert accounts.clock() == CLOCK
    lines = [
        json.dumps(event("2026-11-12T00:00:00Z", node="w1", gpu_model=model)).encode()
        for model in ("NVIDIA GB200", "NVIDIA A100", "NVIDIA B200 ")
    ]
    frame, early = decode_messages([("m", b"\n".join(lines))])
    assert not early
    assert check_rules(frame, accounts)["reason_code"].to_list() == [None, "unknown_gpu_model", "unknown_gpu_model"]


_TYPED_ROW = st.fixed_dictionaries(  # each field present or not: a few hostile values per row
    {},
    optional={
        "samples": st.integers(-(2**63), 2**63 - 1),
        "expected_samples": st.integers(-(2**63), 2**63 - 1),
        "schema_version": st.integers(-(2**63), 2**63 - 1),
        "gpu_seconds": st.floats(allow_nan=True, allow_infinity=True),
        "busy_gpu_seconds": st.floats(allow_nan=True, allow_infinity=True),
        "energy_joules": st.none() | st.floats(allow_nan=True, allow_infinity=True),
        "gpu_fraction": st.floats(allow_nan=True, allow_infinity=True),
        "site": st.text(max_size=8),
        "flags": st.lists(st.none() | st.text(max_size=4), max_size=2),
    }
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(rows=st.lists(_TYPED_ROW, min_size=1, max_size=6))
def test_any_typed_row_in_an_arrow_batch_is_stored_or_refused_never_raised(tmp_path_factory, rows) -> None:
    events = [event(f"2026-11-13T00:{minute:02d}:00Z", node="typed-1") | change for minute, change in enumerate(rows)]
    store = Store(tmp_path_factory.mktemp("typed"))
    result = BatchProcessor(store, RULES).process([("a", arrow_of_rows(events))])
    assert result.accepted + result.refused + result.duplicates == len(events)
    if result.accepted:
        raw = pl.read_parquet(store.files("raw"))
        assert raw["gpu_microseconds"].sum() == sum(to_microseconds(g) for g in raw["gpu_seconds"])
        assert raw["samples"].max() <= 2**31 - 1


def test_a_refused_timestamp_outside_the_window_names_no_period(tmp_path: Path) -> None:
    lines = []
    for start, end in (("0000-01-01T00:00:00Z", "0000-01-01T00:01:00Z"), ("9999-12-31T23:58:00Z", "9999-12-31T23:59:00Z")):
        obj = event("2026-11-03T00:00:00Z", node="w2") | {"interval_start": start, "interval_end": end}
        lines.append(json.dumps(obj | {"event_id": make_event_id("w2", obj["device_uuid"], start)}).encode())
    store = Store(tmp_path)
    result = BatchProcessor(store, RULES).process([("m", b"\n".join(lines))])
    assert result.refused == 2
    quarantine = pl.read_parquet(store.files("quarantine"))
    assert quarantine["reason_code"].to_list() == ["bad_timestamp", "bad_timestamp"]
    assert quarantine["period"].to_list() == ["unknown", "unknown"]
    assert quarantine["interval_start"].null_count() == 2
    assert sorted(p.name for p in (tmp_path / "quarantine").iterdir()) == ["_delta_log", "period=unknown"]


@pytest.mark.parametrize(("start", "code"), [("2026-12-01T23:59:00Z", None), ("2026-12-02T00:00:00Z", "bad_timestamp")])
def test_the_window_ends_exactly_one_day_after_the_consumers_clock(start: str, code: str | None) -> None:
    """CLOCK + 1 day is 2026-12-02T00:00:00Z: an interval may end there, not a minute later."""
    frame, early = decode_messages([("m", json.dumps(event(start, node="w3")).encode())])
    assert not early
    assert check_rules(frame, RULES)["reason_code"].to_list() == [code]
    later = dataclasses.replace(RULES, clock=lambda: datetime(2026, 12, 1, 0, 1, tzinfo=UTC))
    assert check_rules(frame, later)["reason_code"].to_list() == [None]  # the clock moved on: now it fits


def test_a_naive_clock_is_a_programming_error_named_as_such() -> None:
    frame, _ = decode_messages([("m", json.dumps(event()).encode())])
    with pytest.raises(ValueError, match="naive"):
        check_rules(frame, dataclasses.replace(RULES, clock=lambda: datetime(2026, 12, 1)))
