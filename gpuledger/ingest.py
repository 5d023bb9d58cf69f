"""``gpuledger ingest FILE``: put a JSON Lines file of events onto the bus.

Every line is published, valid or not: the stream consumer is the one place that refuses
and keeps refused lines in ``quarantine/`` with their reason. Lines are grouped by node (the
message key) so one node's events keep their order on a partitioned bus. Before publishing, the
same column-wise rules the consumer applies are run to tell the user how many lines will be
refused and why.

With ``wire="arrow"`` (the default: this is bulk traffic) each message is one Arrow IPC batch
(``streams.wire``) when its lines decode cleanly under the wire schema, which is exactly what
the consumer's JSON fast path would have made of them. A chunk holding a line that does not
(not JSON, a wrong type) goes as JSON Lines, so the consumer keeps the refused line's own
bytes in quarantine.
"""

from __future__ import annotations

import dataclasses
import io
import json
import sys
from collections import Counter
from pathlib import Path

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


def ingest_file(
    path: Path, producer: Producer, accounts: Accounts, lines_per_message: int = 5000, wire: str = "arrow"
) -> IngestReport:
    if wire not in WIRES:
        raise GpuledgerError(f"unknown wire format {wire!r}: use one of {', '.join(WIRES)}")
    try:
        data = sys.stdin.buffer.read() if str(path) == "-" else path.read_bytes()
    except OSError as exc:
        raise GpuledgerError(f"cannot read {path}: {exc.strerror}") from exc
    by_node: dict[str, list[bytes]] = {}
    lines = [line for line in data.split(b"\n") if line.strip()]
    for line in lines:
        try:
            node = json.loads(line).get("node")
        except (ValueError, AttributeError):
            node = None
        by_node.setdefault(node if isinstance(node, str) and node else UNPARSED_KEY, []).append(line)
    frame, early = decode_messages([(str(path), b"\n".join(lines))])
    checked = check_rules(frame, accounts)
    refusals = Counter(str(r.reason_code) for r in early)
    refusals.update(c for c in checked["reason_code"].to_list() if c is not None)
    for node in sorted(by_node):
        node_lines = by_node[node]
        for start in range(0, len(node_lines), lines_per_message):
            chunk_lines = node_lines[start : start + lines_per_message]
            chunk = b"\n".join(chunk_lines)
            producer.send(node, _as_arrow(chunk, len(chunk_lines)) if wire == "arrow" else chunk)
    producer.flush()
    refused = sum(refusals.values())
    return IngestReport(len(lines), len(lines) - refused, refused, dict(refusals))


def _as_arrow(chunk: bytes, lines: int) -> bytes:
    """The chunk as one Arrow batch, or the chunk itself when any line would be refused unread."""
    import polars as pl

    try:
        frame = pl.read_ndjson(io.BytesIO(chunk), schema=WIRE_SCHEMA)
    except Exception:  # noqa: BLE001 - the consumer's slow path finds the line and says why
        return chunk
    if frame.height != lines:
        return chunk
    return encode_arrow(frame.to_arrow(compat_level=pl.CompatLevel.oldest()))
