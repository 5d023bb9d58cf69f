"""`ingest` reads its file in chunks: what it publishes and reports does not depend on the
chunk size, each node's events keep their order, and it publishes before it has read the
whole input (memory bounded by the chunk, not the file)."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
from spine_events import ACCOUNTS, event

from gpuledger.ingest import ingest_file
from streams.localbus import LocalBus
from streams.wire import decode_arrow, is_arrow

pytestmark = pytest.mark.unit
TOPIC = "gpu.usage.v1"


def interleaved_lines() -> list[str]:
    """Three nodes' minutes interleaved (as a fleet export is), with refused lines among them."""
    lines = []
    for minute in range(12):
        for node in ("n1", "n2", "n3"):
            gpu = f"GPU-{node}"
            fields = {"entity": "nobody"} if (minute, node) == (5, "n2") else {}
            lines.append(json.dumps(event(f"2026-11-02T00:{minute:02d}:00Z", node=node, gpu=gpu, **fields)))
        if minute == 7:
            lines.append("{not json")
            lines.append("")  # blank lines are skipped, not published
    return lines


def published(bus_dir: Path) -> list[tuple[str, list[str]]]:
    """(key, the message's events as event ids or raw lines) for every message on the bus."""
    messages = []
    for record in LocalBus(bus_dir).consumer(TOPIC, "reader").poll_batch(10_000, 0.1):
        if is_arrow(record.value):
            items = decode_arrow(record.value).column("event_id").to_pylist()
        else:
            items = [_id_or_raw(line) for line in record.value.decode().split("\n")]
        messages.append((record.key.decode(), items))
    return messages


def _id_or_raw(line: str) -> str:
    try:
        return json.loads(line)["event_id"]
    except ValueError:
        return line


@pytest.mark.parametrize("wire", ["arrow", "json"])
def test_small_chunks_publish_and_report_what_one_chunk_does(tmp_path: Path, wire: str) -> None:
    source = tmp_path / "events.jsonl"
    source.write_text("\n".join(interleaved_lines()) + "\n")
    runs = {}
    for name, chunk_bytes in (("whole", 1 << 30), ("small", 2_000)):
        bus = LocalBus(tmp_path / name)
        report = ingest_file(source, bus.producer(TOPIC), ACCOUNTS, lines_per_message=4, wire=wire,
                             chunk_bytes=chunk_bytes)
        runs[name] = (report, published(tmp_path / name))

    whole_report, whole_messages = runs["whole"]
    small_report, small_messages = runs["small"]
    assert small_report == whole_report
    assert (whole_report.lines, whole_report.refused) == (37, 2)
    assert whole_report.refusals == {"unknown_entity": 1, "not_json": 1}
    assert len(small_messages) > len(whole_messages)  # the small chunks did split the file

    def per_key(messages: list[tuple[str, list[str]]]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for key, items in messages:
            out.setdefault(key, []).extend(items)
        return out

    # the same lines under the same keys, each node's in file order, no message too long
    assert per_key(small_messages) == per_key(whole_messages)
    n2 = per_key(small_messages)["n2"]
    assert n2 == [event(f"2026-11-02T00:{m:02d}:00Z", node="n2", gpu="GPU-n2")["event_id"] for m in range(12)]
    assert max(len(items) for _, items in small_messages) <= 4
    assert per_key(small_messages)["unparsed"] == ["{not json"]


def test_it_publishes_before_the_input_ends(tmp_path: Path) -> None:
    """Given input through a pipe, the first message goes out while the writer still has most
    of the file to write: ingest does not read everything first."""
    fifo = tmp_path / "events.pipe"
    os.mkfifo(fifo)
    lines = [
        (json.dumps(event(f"2026-11-02T{h:02d}:{m:02d}:00Z", node=f"n{h}", gpu=f"GPU-{h}")) + "\n").encode()
        for h in range(12) for m in range(60)
    ]  # ≈ 400 KB, several times what a pipe buffers
    written = 0

    def writer() -> None:
        nonlocal written
        fd = os.open(fifo, os.O_WRONLY)
        try:
            for line in lines:
                os.write(fd, line)
                written += 1
        finally:
            os.close(fd)

    class Recording:
        def __init__(self):
            self.written_at_first_send: int | None = None
            self.sent = 0

        def send(self, key: str, value: bytes) -> None:
            if self.written_at_first_send is None:
                self.written_at_first_send = written
            self.sent += 1

        def flush(self, timeout_s: float | None = None) -> None:
            return None

        def close(self) -> None:
            return None

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    producer = Recording()
    report = ingest_file(fifo, producer, ACCOUNTS, lines_per_message=60, chunk_bytes=20_000)
    thread.join()
    assert report.lines == len(lines) and report.refused == 0
    assert producer.written_at_first_send is not None
    assert producer.written_at_first_send < len(lines) // 2, producer.written_at_first_send
