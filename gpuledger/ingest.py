"""``gpuledger ingest FILE``: put a JSON Lines file of events onto the bus.

Every line is published, valid or not: the stream consumer is the one place that refuses
and keeps refused lines in ``quarantine/`` with their reason. Lines are grouped by node (the
message key) so one node's events keep their order on a partitioned bus. Before publishing, the
same column-wise rules the consumer applies are run to tell the user how many lines will be
refused and why.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections import Counter
from pathlib import Path

from storage.errors import GpuledgerError
from streams.bus import Producer
from streams.validate import Accounts, check_rules, decode_messages

UNPARSED_KEY = "unparsed"


@dataclasses.dataclass(frozen=True, slots=True)
class IngestReport:
    lines: int
    valid: int
    refused: int
    refusals: dict[str, int]


def ingest_file(path: Path, producer: Producer, accounts: Accounts, lines_per_message: int = 5000) -> IngestReport:
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
            producer.send(node, b"\n".join(node_lines[start : start + lines_per_message]))
    producer.flush()
    refused = sum(refusals.values())
    return IngestReport(len(lines), len(lines) - refused, refused, dict(refusals))
