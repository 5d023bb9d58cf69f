"""``gpuledger ingest FILE``: put a JSON Lines file of events onto the bus.

Every line is published, valid or not: the stream consumer is the one place that refuses
and keeps refused lines in ``quarantine/`` with their reason. Lines are grouped by node (the
message key) so one node's events keep their order on a partitioned bus. Before publishing, the
same column-wise rules the consumer applies are run to tell the user how many lines will be
refused and why. The file is read in chunks of about 64 MiB (:data:`CHUNK_BYTES`): memory is
bounded by the chunk, not by the file.

With ``wire="arrow"`` (the default: this is bulk traffic) each message is one Arrow IPC batch
(``streams.wire``) when its lines decode cleanly under the wire schema, which is exactly what
the consumer's JSON fast path would have made of them. A chunk holding a line that does not
(not JSON, a wrong type) goes as JSON Lines, so the consumer keeps the refused line's own
bytes in quarantine.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import polars as pl

from storage.errors import GpuledgerError
from streams.bus import Producer
from streams.validate import WIRE_SCHEMA, Accounts, check_rules, decode_messages
from streams.wire import encode_arrow

WIRES = ("arrow", "json")

UNPARSED_KEY = "unparsed"


@dataclasses.dataclass(frozen=True, slots=True)
class IngestReport:
    lines: int
    valid: int
    refused: int
    refusals: dict[str, int]


#: Bytes of lines held before they are checked and published. Memory stays bounded by this
#: (plus the Polars frame of one chunk), not by the file: a 500 MB file is read 64 MiB at a time.
CHUNK_BYTES = 64 * 1024 * 1024


def ingest_file(
    path: Path,
    producer: Producer,
    accounts: Accounts,
    lines_per_message: int = 5000,
    wire: str = "arrow",
    chunk_bytes: int = CHUNK_BYTES,
) -> IngestReport:
    """Publish every line of ``path`` (``-`` for stdin), reading it in chunks of about
    ``chunk_bytes``; returns what the consumer will make of the lines.

    Within a chunk, lines are grouped by node into messages of up to ``lines_per_message``;
    chunks go out in file order, so each node's lines keep their order. A file whose nodes are
    interleaved (one interval of every node, then the next) gives messages of about
    ``chunk_bytes / line size / nodes`` lines.
    """
    if wire not in WIRES:
        raise GpuledgerError(f"unknown wire format {wire!r}: use one of {', '.join(WIRES)}")
    refusals: Counter[str] = Counter()
    total = 0
    for lines in _chunks(path, chunk_bytes):
        total += len(lines)
        frame, early = decode_messages([(str(path), b"\n".join(lines))])
        checked = check_rules(frame, accounts)
        refusals.update(str(r.reason_code) for r in early)
        refusals.update(c for c in checked["reason_code"].to_list() if c is not None)
        # every line decoded on the fast path: the frame holds them all, in order, typed
        clean = not early and frame.height == len(lines) and frame["_raw"].null_count() == frame.height
        _publish(lines, frame if clean else None, producer, lines_per_message, wire)
    producer.flush()
    refused = sum(refusals.values())
    return IngestReport(total, total - refused, refused, dict(refusals))


def _chunks(path: Path, chunk_bytes: int) -> Iterator[list[bytes]]:
    """The file's non-blank lines (without their newline), in lists of about ``chunk_bytes``."""
    chunk: list[bytes] = []
    size = 0
    try:
        with contextlib.ExitStack() as stack:
            handle = sys.stdin.buffer if str(path) == "-" else stack.enter_context(open(path, "rb"))
            for line in handle:
                if line.endswith(b"\n"):
                    line = line[:-1]
                if not line.strip():
                    continue
                chunk.append(line)
                size += len(line)
                if size >= chunk_bytes:
                    yield chunk
                    chunk, size = [], 0
    except OSError as exc:
        raise GpuledgerError(f"cannot read {path}: {exc.strerror}") from exc
    if chunk:
        yield chunk


def _publish(
    lines: list[bytes], frame: pl.DataFrame | None, producer: Producer, lines_per_message: int, wire: str
) -> None:
    """Send one chunk's lines grouped by node, in messages of up to ``lines_per_message``.

    ``frame``: the chunk decoded under the wire schema, when every line decoded cleanly; its
    rows then become the Arrow messages directly (one decode per chunk, not per message)."""
    if frame is not None:
        keys = [n if n else UNPARSED_KEY for n in frame["node"].to_list()]
    else:
        keys = [_node_of(line) for line in lines]
    by_node: dict[str, list[int]] = {}
    for index, key in enumerate(keys):
        by_node.setdefault(key, []).append(index)
    wire_columns = frame.select(list(WIRE_SCHEMA)) if frame is not None and wire == "arrow" else None
    for node in sorted(by_node):
        indexes = by_node[node]
        for start in range(0, len(indexes), lines_per_message):
            part = indexes[start : start + lines_per_message]
            if wire_columns is not None:
                rows = wire_columns[part]
                producer.send(node, encode_arrow(rows.to_arrow(compat_level=pl.CompatLevel.oldest())))
                continue
            payload = b"\n".join(lines[i] for i in part)
            producer.send(node, _as_arrow(payload, len(part)) if wire == "arrow" else payload)


def _node_of(line: bytes) -> str:
    try:
        node = json.loads(line).get("node")
    except (ValueError, AttributeError):
        node = None
    return node if isinstance(node, str) and node else UNPARSED_KEY


def _as_arrow(chunk: bytes, lines: int) -> bytes:
    """The chunk as one Arrow batch, or the chunk itself when any line would be refused unread."""
    try:
        frame = pl.read_ndjson(io.BytesIO(chunk), schema=WIRE_SCHEMA)
    except Exception:  # noqa: BLE001 - the consumer's slow path finds the line and says why
        return chunk
    if frame.height != lines:
        return chunk
    return encode_arrow(frame.to_arrow(compat_level=pl.CompatLevel.oldest()))
