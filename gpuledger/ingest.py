"""``gpuledger ingest FILE``: put a JSON Lines file of events onto the bus.

Every line is published, valid or not: the stream consumer is the one place that refuses
and keeps refused lines in ``quarantine/`` with their reason. Lines are grouped by node (the
message key) so one node's events keep their order on a partitioned bus. Before publishing, the
same column-wise rules the consumer applies are run to tell the user how many lines will be
refused and why. The file is read in chunks of about 64 MiB (:data:`CHUNK_BYTES`): memory is
bounded by the chunk, not by the file.

The prediction is the consumer's own verdict: the same decoder and rules run on each line
(``streams.validate``), and a line's verdict does not depend on the lines around it, so the
count of refusals ingest prints is the count the consumer makes (with the same registry and
a clock on the same day).

With ``wire="arrow"`` (the default: this is bulk traffic) each message is one Arrow IPC batch
(``streams.wire``) of the rows the strict decoder made of its lines. A chunk holding a line
the decoder refuses (not JSON, a wrong type, a key named twice) goes as JSON Lines, so the
consumer keeps the refused line's own bytes in quarantine.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import polars as pl

from storage.errors import GpuledgerError
from streams.bus import Producer
from streams.jsonlines import JSON_WHITESPACE, decode_line
from streams.validate import Accounts, check_rules, decode_messages
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
        refusals.update(_publish_chunk(lines, producer, accounts, lines_per_message, wire))
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
                if not line.strip(JSON_WHITESPACE):
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


def _publish_chunk(
    lines: list[bytes], producer: Producer, accounts: Accounts, lines_per_message: int, wire: str
) -> Counter[str]:
    """Check one chunk's lines with the consumer's decoder and rules, and send them grouped by
    node in messages of up to ``lines_per_message``; returns the refusals by reason."""
    frame, early = decode_messages([("ingest", b"\n".join(lines))])
    # row of the decoded frame for each line (None: refused by the decoder)
    numbers = frame["_source"].str.extract(r"#(\d+)$").cast(pl.Int64).to_list()
    row_of: list[int | None] = [None] * len(lines)
    for row, number in enumerate(numbers):
        row_of[number - 1] = row
    nodes = frame["node"].to_list()
    by_node: dict[str, list[int]] = {}
    for index, line in enumerate(lines):
        row = row_of[index]
        node = nodes[row] if row is not None else _node_of_refused(line)
        by_node.setdefault(node if isinstance(node, str) and node else UNPARSED_KEY, []).append(index)
    checked = check_rules(frame, accounts)
    refusals = Counter(str(r.reason_code) for r in early)
    refusals.update(c for c in checked["reason_code"].to_list() if c is not None)
    for node in sorted(by_node):
        node_lines = by_node[node]
        for start in range(0, len(node_lines), lines_per_message):
            chunk = node_lines[start : start + lines_per_message]
            rows = [row_of[i] for i in chunk]
            if wire == "arrow" and all(row is not None for row in rows):
                payload = encode_arrow(frame[rows].drop("_source", "_raw").to_arrow(compat_level=pl.CompatLevel.oldest()))
            else:
                payload = b"\n".join(lines[i] for i in chunk)
            producer.send(node, payload)
    return refusals


def _node_of_refused(line: bytes) -> str | None:
    """The node of a line the decoder refused, when it still names one (to keep its order)."""
    obj = decode_line(line)
    node = obj.get("node") if isinstance(obj, dict) else None
    return node if isinstance(node, str) else None
