"""streams/event.schema.json, the contract third-party producers read, agrees with the consumer.

Events the collector makes, the spine's builders make, and examples/events.jsonl all pass the
schema; each kind of mistake the schema can state is refused by both the schema and the
consumer's validation; the documented event_id formula is the one the code uses.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import jsonschema
import pytest

import streams.schema

from streams.schema import FIELDS, make_event_id
from streams.validate import check_rules, decode_messages
from tests.unit.spine_events import ACCOUNTS, event, jsonl

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]
SCHEMA = json.loads(Path(streams.schema.__file__).with_name("event.schema.json").read_text(encoding="utf-8"))
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def consumer_verdict(obj: dict) -> str | None:
    """The consumer's reason code for one event, or None when it is accepted."""
    frame, refused = decode_messages([("t", jsonl(obj))])
    if refused:
        return str(refused[0].reason_code)
    return check_rules(frame, ACCOUNTS)["reason_code"][0]


def test_the_schema_is_a_valid_2020_12_schema_naming_every_field() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert list(SCHEMA["properties"]) == list(FIELDS)
    assert SCHEMA["required"] == list(FIELDS)


def test_the_documented_event_id_formula_is_the_code_s() -> None:
    node, device, start = "gpu-a017", "MIG-5b1f…", "2026-11-01T00:00:00Z"
    documented = hashlib.sha256(f"{node}\u001f{device}\u001f{start}".encode()).hexdigest()[:32]
    assert make_event_id(node, device, start) == documented
    producers = (REPO / "docs" / "producers.md").read_text()
    assert "U+001F" in producers and "[:32]" in producers


@pytest.mark.parametrize("make", [
    lambda: event(),
    lambda: event(device="MIG-1", gpu_fraction=3 / 7, mig_profile="3g.71gb", gpu_seconds=60 * 3 / 7, busy_gpu_seconds=1.0),
    lambda: event(job_id=None, energy_joules=None, project="unattributed", flags=["partial_interval", "new_flag"]),
], ids=["whole-gpu", "mig", "nulls"])
def test_events_the_consumer_accepts_pass_the_schema(make) -> None:
    obj = make()
    assert consumer_verdict(obj) is None
    VALIDATOR.validate(obj)


def test_the_shipped_example_events_pass_the_schema() -> None:
    lines = (REPO / "examples" / "events.jsonl").read_text().splitlines()
    assert len(lines) >= 10
    for line in lines:
        VALIDATOR.validate(json.loads(line))


MISTAKES = {
    "schema_version 2": lambda e: e | {"schema_version": 2},
    "event_id upper case": lambda e: e | {"event_id": e["event_id"].upper()},
    "gpu_uuid an index": lambda e: e | {"gpu_uuid": "0", "device_uuid": "0"},
    "timestamp in KST": lambda e: e | {"interval_start": "2026-11-02T09:00:00+09:00"},
    "fraction above 1": lambda e: e | {"gpu_fraction": 1.5},
    "negative seconds": lambda e: e | {"gpu_seconds": -1.0, "busy_gpu_seconds": 0.0},
    "negative energy": lambda e: e | {"energy_joules": -5.0},
    "empty node": lambda e: e | {"node": ""},
    "no flags": lambda e: {k: v for k, v in e.items() if k != "flags"},
    "samples as text": lambda e: e | {"samples": "6"},
}


@pytest.mark.parametrize("mistake", MISTAKES, ids=list(MISTAKES))
def test_a_mistake_the_schema_states_is_refused_by_both(mistake: str) -> None:
    obj = MISTAKES[mistake](event())
    assert not VALIDATOR.is_valid(obj), mistake
    assert consumer_verdict(obj) is not None, mistake
