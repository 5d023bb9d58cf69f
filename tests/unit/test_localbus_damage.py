"""The local bus under damage: only a torn tail is ever cut; any other bad byte, a misplaced
saved position or a garbled group file stops readers and writers with the place named.
Also trimming, and one consumer per group (with two real processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import signal
import time
from pathlib import Path

import pytest

from streams.errors import BusCorrupt, ConsumerGroupBusy
from streams.localbus import LocalBus, current_segment

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
HEADER = 14  # magic 2, crc 4, key_len 4, value_len 4


def published(tmp_path: Path, count: int = 10) -> tuple[LocalBus, Path, list[int]]:
    """A bus with ``count`` records ``m0``…; returns it, its log file and each record's byte."""
    bus = LocalBus(tmp_path / "bus")
    producer = bus.producer("t")
    starts, at = [], 0
    for i in range(count):
        value = f"m{i}".encode()
        producer.send("node", value)
        starts.append(at)
        at += HEADER + len(b"node") + len(value)
    producer.flush()
    return bus, tmp_path / "bus" / "t" / "log", starts


def flip(path: Path, byte: int) -> None:
    data = bytearray(path.read_bytes())
    data[byte] ^= 0x40
    path.write_bytes(bytes(data))


def drain(bus: LocalBus, group: str) -> list[bytes]:
    consumer = bus.consumer("t", group)
    try:
        values = []
        while batch := consumer.poll_batch(3, 0.0):
            values.extend(r.value for r in batch)
            consumer.commit({0: batch[-1].offset + 1})
        return values
    finally:
        consumer.close()


def consume_some(bus: LocalBus, group: str, count: int) -> None:
    consumer = bus.consumer("t", group)
    batch = consumer.poll_batch(count, 0.0)
    consumer.commit({0: batch[-1].offset + 1})
    consumer.close()


@pytest.mark.parametrize(
    ("where", "reason"),
    [
        (lambda s: s[6] + HEADER + 5, "crc mismatch"),  # a byte of a value
        (lambda s: s[6] + 3, "crc mismatch"),  # a byte of the crc
        (lambda s: s[6], "bad magic"),  # the magic
        (lambda s: s[6] + 8, "length 16390 runs past the end"),  # the high byte of key_len: a huge length
    ],
    ids=["value", "crc", "magic", "length"],
)
def test_a_bad_byte_in_the_unconsumed_part_stops_the_reader_and_the_writer(tmp_path, where, reason) -> None:
    # given ten records, four of them consumed, and record 6 damaged
    bus, log, starts = published(tmp_path)
    consume_some(bus, "g", 4)
    flip(log, where(starts))
    size = log.stat().st_size

    # when the group reads on, then it gets records 4 and 5, and then an error naming the place
    consumer = bus.consumer("t", "g")
    assert [r.value for r in consumer.poll_batch(100, 0.0)] == [b"m4", b"m5"]
    with pytest.raises(BusCorrupt, match=rf"bad record at offset 6 \(byte {starts[6]}\) in .*/t/log: {reason}"):
        consumer.poll_batch(100, 0.0)
    with pytest.raises(BusCorrupt, match="bad record at offset 6"):
        consumer.caught_up()  # never "caught up" in front of damage
    consumer.close()

    # and a writer refuses to append instead of cutting the log at the damage
    producer = bus.producer("t")
    producer.send("node", b"later")
    with pytest.raises(BusCorrupt, match=rf"bad record at offset 6 \(byte {starts[6]}\)"):
        producer.flush()
    assert log.stat().st_size == size


def test_a_bad_byte_in_the_consumed_part_is_reported_by_the_writer_and_trim_removes_it(tmp_path) -> None:
    # given ten records all consumed by the only group, and record 2 damaged afterwards
    bus, log, starts = published(tmp_path)
    assert len(drain(bus, "g")) == 10
    flip(log, starts[2] + HEADER + 5)

    # when a writer appends, then it names the damage and cuts nothing
    producer = bus.producer("t")
    producer.send("node", b"m10")
    with pytest.raises(BusCorrupt, match=rf"bad record at offset 2 \(byte {starts[2]}\)"):
        producer.flush()
    assert log.stat().st_size == starts[-1] + HEADER + 6

    # when the consumed part is trimmed, then the damage is gone and nothing unread was lost
    result = bus.trim("t")
    assert (result.dropped_records, result.kept_bytes) == (10, 0)
    producer.flush()
    assert drain(bus, "g") == [b"m10"]


def test_a_torn_or_zeroed_tail_is_still_cut(tmp_path) -> None:
    for tail in (b"GL\x00\x00\x00\x01\x00\x00", b"GL" + bytes(4) + (4).to_bytes(4, "big") + (100).to_bytes(4, "big") + b"nodepartial", bytes(4096)):
        # given a log whose writer died mid-append (or left zeros after the file grew)
        bus, log, _ = published(tmp_path / str(len(tail)), 3)
        with open(log, "ab") as handle:
            handle.write(tail)
        # then readers see the whole records and call it caught up, the next writer cuts the tail
        consumer = bus.consumer("t", "g")
        assert [r.value for r in consumer.poll_batch(100, 0.0)] == [b"m0", b"m1", b"m2"]
        assert consumer.caught_up()
        consumer.close()
        producer = bus.producer("t")
        producer.send("node", b"after")
        producer.flush()
        assert drain(bus, "h") == [b"m0", b"m1", b"m2", b"after"]


@pytest.mark.parametrize("shift", [7, 1, -3])
def test_a_saved_position_off_a_record_boundary_is_refused(tmp_path, shift) -> None:
    bus, _, starts = published(tmp_path)
    consume_some(bus, "g", 4)
    group_file = tmp_path / "bus" / "t" / "groups" / "g.json"
    saved = json.loads(group_file.read_text())
    assert saved == {"offset": 4, "position": starts[4]}
    group_file.write_text(json.dumps({"offset": 4, "position": starts[4] + shift}))
    with pytest.raises(BusCorrupt, match=rf"g\.json: saved position {starts[4] + shift} \(offset 4\) is not on a record boundary"):
        bus.consumer("t", "g")


def test_a_saved_position_past_the_end_is_refused(tmp_path) -> None:
    bus, log, _ = published(tmp_path)
    size = log.stat().st_size
    (tmp_path / "bus" / "t" / "groups").mkdir(parents=True)
    (tmp_path / "bus" / "t" / "groups" / "g.json").write_text(json.dumps({"offset": 99, "position": size + 10}))
    with pytest.raises(BusCorrupt, match=rf"saved position {size + 10} \(offset 99\) is past the end of .*log \({size} bytes\)"):
        bus.consumer("t", "g")


@pytest.mark.parametrize("text", ['{"offset": 4, "posit', "", '{"offset": -1, "position": 0}', "[1, 2]"])
def test_a_garbled_group_file_is_named(tmp_path, text) -> None:
    bus, _, _ = published(tmp_path)
    (tmp_path / "bus" / "t" / "groups").mkdir(parents=True)
    (tmp_path / "bus" / "t" / "groups" / "g.json").write_text(text)
    with pytest.raises(BusCorrupt, match=r"groups/g\.json: garbled consumer group position"):
        bus.consumer("t", "g")


def test_trim_drops_what_every_group_committed_and_offsets_go_on(tmp_path) -> None:
    # given ten records; group a committed 6, group b committed 4
    bus, log, starts = published(tmp_path)
    consume_some(bus, "a", 6)
    consume_some(bus, "b", 4)
    writer = bus.producer("t")  # a producer that appended before the trim keeps working after it

    # when the log is trimmed
    result = bus.trim("t")

    # then the four records both groups read are gone from disk, the rest kept byte for byte
    assert (result.dropped_records, result.dropped_bytes) == (4, starts[4])
    segment = current_segment(tmp_path / "bus" / "t")
    assert segment is not None and (segment.base_offset, segment.base_position) == (4, starts[4])
    assert not log.exists() and segment.path.stat().st_size == result.kept_bytes
    # and each group resumes where it was, with the same offsets; a new group starts at 4
    writer.send("node", b"m10")
    writer.flush()
    consumer = bus.consumer("t", "a")
    batch = consumer.poll_batch(100, 0.0)
    assert [(r.offset, r.value) for r in batch] == [(6, b"m6"), (7, b"m7"), (8, b"m8"), (9, b"m9"), (10, b"m10")]
    consumer.commit({0: 11})
    consumer.close()
    assert drain(bus, "b") == [b"m4", b"m5", b"m6", b"m7", b"m8", b"m9", b"m10"]
    assert drain(bus, "new")[0] == b"m4"
    # and trimming again drops up to the slowest group's commit (everyone is at the end now)
    again = bus.trim("t")
    assert again.dropped_records == 7 and again.kept_bytes == 0
    writer.send("node", b"m11")
    writer.flush()
    assert drain(bus, "a") == [b"m11"]


def test_trim_leaves_a_topic_nobody_reads(tmp_path) -> None:
    bus, log, _ = published(tmp_path)
    assert bus.trim("t").dropped_bytes == 0
    assert log.stat().st_size > 0


def test_a_second_consumer_of_a_group_is_refused_and_a_released_group_can_be_taken(tmp_path) -> None:
    bus, _, _ = published(tmp_path)
    first = bus.consumer("t", "g")
    with pytest.raises(ConsumerGroupBusy, match=rf"group 'g' is running on the local bus in {tmp_path}/bus"):
        bus.consumer("t", "g")
    other = bus.consumer("t", "other")  # another group is fine
    other.close()
    first.close()
    bus.consumer("t", "g").close()


def test_two_consume_processes_on_one_data_dir_the_second_is_refused(tmp_path) -> None:
    """Two real ``gpuledger consume`` processes: the running one keeps the group, the second
    refuses at once with one line, and nothing is stored twice."""
    data = tmp_path / "data"
    events = tmp_path / "events.jsonl"
    events.write_text(json.dumps(_event("2026-11-02T00:00:00Z")) + "\n")
    assert _cli("ingest", str(events), "--data-dir", str(data)).returncode == 0
    group_file = data / "bus" / "gpu.usage.v1" / "groups" / "gpuledger-consumer.json"
    first = subprocess.Popen(
        [sys.executable, "-m", "gpuledger", "consume", "--data-dir", str(data)],
        cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert _wait_until(group_file.exists)  # the first consumer has the group and committed
        second = _consume(data)
        assert second.returncode == 1
        lines = [ln for ln in second.stderr.strip().splitlines() if not ln.startswith("{")]  # JSON logs aside
        assert len(lines) == 1, second.stderr
        assert "another consumer of group 'gpuledger-consumer'" in lines[0] and str(data / "bus") in lines[0]
        assert "stop it first" in lines[0]
    finally:
        first.send_signal(signal.SIGTERM)
        out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert "1 events accepted" in out
    again = _consume(data)  # released: the group can be consumed again, and nothing is left
    assert again.returncode == 0 and "0 events accepted" in again.stdout


def _event(start: str) -> dict:
    from spine_events import event

    return event(start)


def _wait_until(condition, timeout_s: float = 180.0) -> bool:
    """Poll ``condition`` (bounded): waiting on another process, not timing it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


def test_consume_and_ingest_exit_non_zero_on_a_damaged_bus(tmp_path) -> None:
    data = tmp_path / "data"
    events = tmp_path / "events.jsonl"
    events.write_text('{"not": "an event"}\n')
    assert _cli("ingest", str(events), "--data-dir", str(data), "--wire", "json").returncode == 0
    assert _cli("ingest", str(events), "--data-dir", str(data), "--wire", "json").returncode == 0
    flip(data / "bus" / "gpu.usage.v1" / "log", HEADER + 9)  # a byte of the first record's value
    for proc in (_consume(data), _cli("ingest", str(events), "--data-dir", str(data))):
        assert proc.returncode == 1, proc.stdout + proc.stderr
        lines = [ln for ln in proc.stderr.strip().splitlines() if not ln.startswith("{")]  # JSON logs aside
        assert len(lines) == 1 and "bad record at offset 0 (byte 0)" in lines[0], proc.stderr


def _env() -> dict[str, str]:
    # the sample registry, named as an operator names theirs (no command falls back to it)
    return {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "400", "GPULEDGER_CONFIG": "",
            "GPULEDGER_REGISTRY": str(REPO / "examples" / "registry.toml")}


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gpuledger", *args], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300
    )


def _consume(data: Path) -> subprocess.CompletedProcess[str]:
    return _cli("consume", "--until-idle", "--data-dir", str(data))
