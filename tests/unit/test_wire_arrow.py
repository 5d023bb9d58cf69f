"""Arrow IPC batches on the wire: the same events, the same verdicts, nothing lost."""

from __future__ import annotations

import io
import json

import polars as pl
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest
from spine_events import ACCOUNTS, event, jsonl

from storage.dataset import Store
from storage.rollup import rolled_up
from streams.pipeline import BatchProcessor
from streams.replay import replay_quarantine
from streams.validate import WIRE_SCHEMA, Accounts, check_rules, decode_messages
from streams.wire import ARROW_RAW_PREFIX, ArrowBatchError, decode_arrow, encode_arrow, is_arrow, payload_of_raw

pytestmark = pytest.mark.unit


def arrow_of(*events: dict) -> bytes:
    frame = pl.read_ndjson(io.BytesIO(jsonl(*events)), schema=WIRE_SCHEMA)
    return encode_arrow(frame.to_arrow())


def raw_ipc(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    with ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def verdicts(messages: list[tuple[str, bytes]]) -> list[tuple[str | None, str | None]]:
    frame, early = decode_messages(messages)
    checked = check_rules(frame, ACCOUNTS)
    return [(str(r.reason_code), r.reason) for r in early] + list(
        zip(checked["reason_code"].to_list(), checked["reason"].to_list(), strict=True)
    )


# one event per rule, plus valid ones: every verdict must be the same whichever encoding
MIXED = [
    event("2026-11-02T00:00:00Z"),
    event("2026-11-02T00:01:00Z", gpu_seconds=61.0),
    event("2026-11-02T00:02:00Z", entity="acme"),
    event("2026-11-02T00:03:00Z", project="samsung-foundry-ai"),
    event("2026-11-02T00:04:00Z", interval_start="2026-11-02T09:04:00+09:00"),
    event("2026-11-02T00:05:00Z", event_id="0" * 32),
    event("2026-11-02T00:06:00Z", site=None),
    event("2026-11-02T00:07:00Z", schema_version=2),
    event("2026-11-02T00:08:00Z", busy_gpu_seconds=-1.0),
    event("2026-11-02T00:09:00Z", device="MIG-1", mig_profile="3g.90gb", gpu_fraction=0.5, gpu_seconds=30.0, busy_gpu_seconds=15.0),
    event("2026-11-02T00:10:00Z", project="unattributed", flags=["partial_interval", "gpu_lost"]),
]


def test_an_arrow_message_is_told_apart_from_json_by_its_first_bytes() -> None:
    assert is_arrow(arrow_of(event()))
    assert not is_arrow(jsonl(event()))
    assert not is_arrow(b"")


def test_arrow_and_json_give_the_same_verdicts_and_sentences() -> None:
    as_json = verdicts([("m", jsonl(*MIXED))])
    as_arrow = verdicts([("m", arrow_of(*MIXED))])
    assert as_arrow == as_json
    assert [code for code, _ in as_json].count(None) == 3  # the test covers refusals and passes


def test_arrow_and_json_store_identical_rows(tmp_path) -> None:
    """Same events, two encodings, two stores: the raw and hourly rows are equal."""
    results = []
    for name, payload in (("json", jsonl(*MIXED)), ("arrow", arrow_of(*MIXED))):
        store = Store(tmp_path / name)
        result = BatchProcessor(store, ACCOUNTS).process([("topic/0@1", payload)])
        raw = pl.concat([pl.from_arrow(pq.read_table(f)) for f in store.files("raw")])  # an independent reader
        hourly = pl.read_parquet(rolled_up(store).files("usage_hourly"))
        quarantine = pl.read_parquet(store.files("quarantine")).sort("source")  # ids hash the kept line
        results.append((result.accepted, result.refused, raw, hourly, quarantine.drop("raw")))
    (a_acc, a_ref, a_raw, a_hourly, a_q), (b_acc, b_ref, b_raw, b_hourly, b_q) = results
    assert (a_acc, a_ref) == (b_acc, b_ref) == (3, 8)
    assert a_raw.equals(b_raw)
    assert a_hourly.equals(b_hourly)
    assert a_q.drop("quarantine_id").equals(b_q.drop("quarantine_id"))


def test_a_refused_arrow_row_is_kept_as_its_json_line_and_replays_once(tmp_path) -> None:
    store = Store(tmp_path)
    stranger = event("2026-11-02T00:00:00Z", entity="kepco", project="kepco-grid", gpu="GPU-9")
    BatchProcessor(store, ACCOUNTS).process([("topic/0@7", arrow_of(event(), stranger))])
    kept = pl.read_parquet(store.files("quarantine"))
    assert kept["reason_code"].to_list() == ["unknown_entity"]
    assert kept["source"].to_list() == ["topic/0@7#2"]
    line = json.loads(kept["raw"][0])
    assert {k: line[k] for k in stranger} == stranger  # every field of the contract, same values

    amended = Accounts(ACCOUNTS.entities | {"kepco"}, {**ACCOUNTS.project_entity, "kepco-grid": "kepco"})
    first = replay_quarantine(store, BatchProcessor(store, amended))
    again = replay_quarantine(store, BatchProcessor(store, amended))
    assert sum(r.accepted for r in first) == 1
    assert sum(r.accepted for r in again) == 0
    assert pl.read_parquet(store.files("raw"))["event_id"].n_unique() == 2


def test_arrow_and_json_messages_mix_in_one_batch_in_order(tmp_path) -> None:
    store = Store(tmp_path)
    a, b, c = (event(f"2026-11-02T00:0{m}:00Z") for m in range(3))
    result = BatchProcessor(store, ACCOUNTS).process(
        [("t/0@1", jsonl(a)), ("t/0@2", arrow_of(b, a)), ("t/0@3", jsonl(c)), ("t/0@4", arrow_of(c))]
    )
    assert (result.accepted, result.duplicates, result.refused) == (3, 2, 0)


def test_an_unreadable_arrow_message_is_quarantined_whole_with_its_bytes(tmp_path) -> None:
    store = Store(tmp_path)
    good = arrow_of(event())
    broken = good[: len(good) // 2]  # cut in the middle: starts like Arrow, does not read
    result = BatchProcessor(store, ACCOUNTS).process([("t/0@1", broken), ("t/0@2", jsonl(event("2026-11-02T00:05:00Z")))])
    assert (result.accepted, result.refused) == (1, 1)
    kept = pl.read_parquet(store.files("quarantine"))
    assert kept["reason_code"].to_list() == ["bad_arrow_batch"]
    assert "not a readable Arrow IPC stream" in kept["reason"][0]
    assert kept["raw"][0].startswith(ARROW_RAW_PREFIX)
    assert payload_of_raw(kept["raw"][0]) == broken  # nothing lost: the exact bytes come back


def test_wrong_columns_are_all_named_at_once() -> None:
    table = pl.read_ndjson(io.BytesIO(jsonl(event())), schema=WIRE_SCHEMA).to_arrow()
    table = table.drop_columns(["site", "flags"]).append_column("colour", pa.array(["red"]))
    table = table.set_column(table.column_names.index("gpu_seconds"), "gpu_seconds", pa.array(["sixty"]))
    with pytest.raises(ArrowBatchError) as caught:
        decode_arrow(raw_ipc(table))
    message = str(caught.value)
    assert "columns missing: site, flags" in message
    assert "colour" in message
    with pytest.raises(ArrowBatchError, match="gpu_seconds is string, expected double"):
        decode_arrow(raw_ipc(pl.read_ndjson(io.BytesIO(jsonl(event())), schema=WIRE_SCHEMA).to_arrow()
                             .set_column(14, "gpu_seconds", pa.array(["sixty"]))))


def test_narrower_types_that_read_exactly_are_accepted() -> None:
    table = pl.read_ndjson(io.BytesIO(jsonl(event())), schema=WIRE_SCHEMA).to_arrow()
    narrow = table.set_column(17, "samples", pa.array([6], pa.int32())).set_column(
        2, "site", pa.array(["dc1"], pa.large_string())
    )
    decoded = decode_arrow(raw_ipc(narrow))
    assert decoded.column("samples").type == pa.int64()
    assert decoded.column("samples").to_pylist() == [6]
    assert verdicts([("m", raw_ipc(narrow))]) == [(None, None)]


def test_a_null_in_a_required_column_is_a_refused_row_not_a_refused_message() -> None:
    assert verdicts([("m", arrow_of(event(job_id=None, site=None), event("2026-11-02T00:01:00Z")))]) == [
        ("missing_field", "missing or null: site "),
        (None, None),
    ]


def _ingest_and_consume(tmp_path, name: str, wire: str, lines: bytes):
    from gpuledger.ingest import ingest_file
    from streams.localbus import LocalBus

    source = tmp_path / f"{name}.jsonl"
    source.write_bytes(lines)
    bus = LocalBus(tmp_path / f"bus-{name}")
    report = ingest_file(source, bus.producer("gpu.usage.v1"), ACCOUNTS, lines_per_message=4, wire=wire)
    records = bus.consumer("gpu.usage.v1", "t").poll_batch(1000, 0.0)
    store = Store(tmp_path / f"data-{name}")
    result = BatchProcessor(store, ACCOUNTS).process([(f"{r.partition}@{r.offset}", r.value) for r in records])
    return report, records, result, store


def test_ingest_sends_clean_chunks_as_arrow_and_a_chunk_with_a_bad_line_as_json(tmp_path) -> None:
    good = [event(f"2026-11-02T00:{m:02d}:00Z") for m in range(6)]
    other = [event(f"2026-11-02T00:{m:02d}:00Z", node="n2", gpu="GPU-2") for m in range(3)]
    lines = jsonl(*good) + b"\n" + jsonl(*other) + b'\n{"node": "n2", "gpu_seconds": "sixty"}\n'
    report_a, records_a, result_a, store_a = _ingest_and_consume(tmp_path, "a", "arrow", lines)
    report_j, records_j, result_j, store_j = _ingest_and_consume(tmp_path, "j", "json", lines)

    # n1: 6 lines in chunks of 4 → two Arrow messages; n2's chunk holds the broken line → JSON
    assert [(r.key, is_arrow(r.value)) for r in records_a] == [(b"n1", True), (b"n1", True), (b"n2", False)]
    assert not any(is_arrow(r.value) for r in records_j)
    assert report_a == report_j
    assert (result_a.accepted, result_a.refused) == (result_j.accepted, result_j.refused) == (9, 1)
    assert pl.read_parquet(store_a.files("raw")).sort("event_id").equals(
        pl.read_parquet(store_j.files("raw")).sort("event_id")
    )
    kept = pl.read_parquet(store_a.files("quarantine"))
    assert kept["raw"].to_list() == ['{"node": "n2", "gpu_seconds": "sixty"}']  # its own bytes
