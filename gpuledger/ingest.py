"""``gpuledger ingest FILE``: put a JSON Lines file of events onto the bus.

Every line is published, valid or not: the stream consumer is the one place that refuses
and keeps refused lines in ``quarantine/`` with their reason. Lines are grouped by node (the
message key) so one node's events keep their order on a partitioned bus. Before publishing, the
same column-wise rules the consumer applies are run to tell the user how many lines will be
refused and why.

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

import dataclasses
import sys
from collections import Counter
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


def ingest_file(
    path: Path, producer: Producer, accounts: Accounts, lines_per_message: int = 5000, wire: str = "arrow"
) -> IngestReport:
    if wire not in WIRES:
        raise GpuledgerError(f"unknown wire format {wire!r}: use one of {', '.join(WIRES)}")
    try:
        data = sys.stdin.buffer.read() if str(path) == "-" else path.read_bytes()
    except OSError as exc:
        raise GpuledgerError(f"cannot read {path}: {exc.strerror}") from exc
    lines = [line for line in data.split(b"\n") if line.strip(JSON_WHITESPACE)]
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
    producer.flush()
    refused = sum(refusals.values())
    return IngestReport(len(lines), len(lines) - refused, refused, dict(refusals))


def _node_of_refused(line: bytes) -> str | None:
    """The node of a line the decoder refused, when it still names one (to keep its order)."""
    obj = decode_line(line)
    node = obj.get("node") if isinstance(obj, dict) else None
    return node if isinstance(node, str) else None
