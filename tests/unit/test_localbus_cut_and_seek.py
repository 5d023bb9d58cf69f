"""The local bus tells a torn tail from a log cut in the middle, and storage's offsets win
over the group file (issue 18, items 5, 2 and 4 on the embedded bus).

Before: a log truncated mid-record (or at a record boundary, or zeroed from the middle on)
looked like the torn tail of a crashed writer; readers stopped there and said "caught up", the
next writer cut it, and 6,000 of 12,000 events were gone with exit 0. A group file moved ahead
to a valid record boundary, or one left ahead of a lost raw commit, was trusted over what
storage holds."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from spine_events import ACCOUNTS, event, jsonl
from test_cli_damaged_state import cli, events_file, one_error_line
from test_localbus_damage import HEADER

from storage.dataset import Store
from streams.consumer import StreamConsumer
from streams.errors import BusCorrupt
from streams.localbus import LocalBus
from streams.pipeline import BatchProcessor

pytestmark = pytest.mark.unit


def twenty(tmp_path: Path) -> tuple[LocalBus, Path, list[int]]:
    """Records m0…m19 in four appends (a durable end after each); returns each record's byte."""
    bus = LocalBus(tmp_path / "bus")
    producer = bus.producer("t")
    starts, at = [], 0
    for i in range(20):
        producer.send("node", f"m{i:02d}".encode())
        starts.append(at)
        at += HEADER + 4 + 3
        if i % 5 == 4:
            producer.flush()
    return bus, tmp_path / "bus" / "t" / "log", starts


def read_all(bus: LocalBus, group: str) -> list[bytes]:
    consumer = bus.consumer("t", group)
    try:
        values = []
        while batch := consumer.poll_batch(4, 0.0):
            values.extend(r.value for r in batch)
            consumer.commit({0: batch[-1].offset + 1})
        assert consumer.caught_up()
        return values
    finally:
        consumer.close()


@pytest.mark.parametrize(
    ("cut", "what"),
    [(lambda s: s[12] + 9, r"breaks off \(an incomplete or zeroed record\)"), (lambda s: s[12], "ends")],
    ids=["mid-record", "at-a-record-boundary"],
)
def test_a_log_cut_in_the_middle_is_named_by_reader_and_writer_and_nothing_is_cut(tmp_path, cut, what) -> None:
    # given twenty durably written records, and the log truncated in the middle of them
    bus, log, starts = twenty(tmp_path)
    at = cut(starts)
    log.write_bytes(log.read_bytes()[:at])
    # when a group reads, then it gets the records before the cut, and then the damage, named
    consumer = bus.consumer("t", "g")
    assert [r.value for r in consumer.poll_batch(100, 0.0)] == [f"m{i:02d}".encode() for i in range(12)]
    with pytest.raises(BusCorrupt, match=rf"t/log {what} at byte {starts[12]}, but [\d,]+ more byte\(s\) up to byte {20 * 21} were durably written"):
        consumer.poll_batch(100, 0.0)
    with pytest.raises(BusCorrupt, match="durably written"):
        consumer.caught_up()  # never "caught up" in front of a cut
    consumer.close()
    # and a writer refuses to append (it would cut the rest and bury the damage)
    producer = bus.producer("t")
    producer.send("node", b"later")
    with pytest.raises(BusCorrupt, match="truncated or damaged in the middle"):
        producer.flush()
    assert log.stat().st_size == at


def test_zeros_from_the_middle_on_are_damage_not_a_tail(tmp_path) -> None:
    bus, log, starts = twenty(tmp_path)
    data = bytearray(log.read_bytes())
    data[starts[7]:] = bytes(len(data) - starts[7])
    log.write_bytes(bytes(data))
    with pytest.raises(BusCorrupt, match=rf"breaks off .* at byte {starts[7]}"):
        read_all(bus, "g")


def test_a_torn_tail_after_the_durable_end_is_still_a_torn_tail(tmp_path) -> None:
    bus, log, _ = twenty(tmp_path)
    with open(log, "ab") as handle:  # a writer that died mid-append
        handle.write(b"GL" + bytes(4) + (4).to_bytes(4, "big") + (100).to_bytes(4, "big") + b"nodepart")
    assert len(read_all(bus, "g")) == 20
    producer = bus.producer("t")
    producer.send("node", b"m20")
    producer.flush()
    assert read_all(bus, "g") == [b"m20"]


def test_a_saved_offset_that_does_not_match_its_position_is_refused(tmp_path) -> None:
    bus, _, starts = twenty(tmp_path)
    groups = tmp_path / "bus" / "t" / "groups"
    groups.mkdir(parents=True)
    (groups / "g.json").write_text(json.dumps({"offset": 4, "position": starts[6]}))
    with pytest.raises(BusCorrupt, match=rf"saved position {starts[6]} is the start of record 6, not of offset 4"):
        bus.consumer("t", "g")


def stream(bus: LocalBus, root: Path, batch: int = 4) -> StreamConsumer:
    return StreamConsumer(bus.consumer("gpu.usage.v1", "g"), BatchProcessor(Store(root), ACCOUNTS),
                          max_batch_records=batch, group="g")


def publish(bus: LocalBus, count: int) -> None:
    producer = bus.producer("gpu.usage.v1")
    for i in range(count):
        producer.send("n1", jsonl(event(f"2026-11-02T03:{i:02d}:00Z")))
    producer.flush()


def stored_ids(root: Path) -> pl.Series:
    return pl.read_parquet(Store(root).files("raw"))["event_id"]


def test_a_group_file_moved_ahead_is_not_trusted_over_storage(tmp_path, caplog) -> None:
    # given ten messages, one batch of four stored, the group file at offset 4
    bus = LocalBus(tmp_path / "bus")
    publish(bus, 10)
    with stream(bus, tmp_path / "data") as consumer:
        assert consumer.run_once().accepted == 4
    group_file = tmp_path / "bus" / "gpu.usage.v1" / "groups" / "g.json"
    # when the group file is moved ahead to the (valid) start of record 8
    reader = bus.consumer("gpu.usage.v1", "probe")
    positions = {r.offset: None for r in reader.poll_batch(100, 0.0)}
    reader.commit({0: 8})
    reader.close()
    group_file.write_text((tmp_path / "bus" / "gpu.usage.v1" / "groups" / "probe.json").read_text())
    assert json.loads(group_file.read_text())["offset"] == 8 and len(positions) == 10
    # then the consumer resumes where storage says (4), says so, and every event is stored once
    with stream(bus, tmp_path / "data", batch=100) as consumer:
        totals = consumer.run(until_idle=True, idle_polls=1)
    assert totals.accepted == 6
    assert "saved position offset 8 is ahead of storage; storage holds it up to offset 3, so reading resumes at offset 4" in caplog.text
    ids = stored_ids(tmp_path / "data")
    assert ids.len() == ids.n_unique() == 10


def test_a_lost_newest_raw_commit_is_read_again_from_the_bus(tmp_path) -> None:
    # given ten messages stored in three batches, and raw's newest commit lost (its log entry gone)
    bus = LocalBus(tmp_path / "bus")
    publish(bus, 10)
    with stream(bus, tmp_path / "data") as consumer:
        consumer.run(until_idle=True, idle_polls=1)
    newest = sorted((tmp_path / "data" / "raw" / "_delta_log").glob("*.json"))[-1]
    newest.unlink()
    assert stored_ids(tmp_path / "data").len() == 8
    # when the consumer starts again, then it reads from storage's offset, not the group file's
    with stream(bus, tmp_path / "data") as consumer:
        assert consumer.run(until_idle=True, idle_polls=1).accepted == 2
    ids = stored_ids(tmp_path / "data")
    assert ids.len() == ids.n_unique() == 10


def test_consume_names_a_log_cut_in_the_middle_in_one_line(tmp_path) -> None:
    # given 12,000 events ingested as 24 messages, and the log file cut in half
    data = tmp_path / "data"
    assert cli("ingest", str(events_file(tmp_path / "e.jsonl", 12_000)), "--lines-per-message", "500",
               data=data).returncode == 0
    log = data / "bus" / "gpu.usage.v1" / "log"
    half = log.stat().st_size // 2
    log.write_bytes(log.read_bytes()[:half])
    # when the consumer drains, then it stops with one line naming the file and the byte
    line = one_error_line(cli("consume", "--until-idle", data=data))
    assert f"{log} breaks off (an incomplete or zeroed record) at byte" in line
    assert "durably written" in line and "restore the bus from a backup" in line


def test_storage_that_holds_nothing_is_believed_over_a_group_file(tmp_path, caplog) -> None:
    # given ten messages consumed into a store, and then the store's tables lost (deleted)
    import shutil

    bus = LocalBus(tmp_path / "bus")
    publish(bus, 10)
    with stream(bus, tmp_path / "data") as consumer:
        consumer.run(until_idle=True, idle_polls=1)
    shutil.rmtree(tmp_path / "data")
    # when the consumer starts again, then it reads from the start, says so, and stores all ten
    with stream(bus, tmp_path / "data", batch=100) as consumer:
        assert consumer.run(until_idle=True, idle_polls=1).accepted == 10
    assert "saved position offset 10 is ahead of storage; storage holds nothing of this partition" in caplog.text
