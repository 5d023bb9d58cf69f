"""Schema v1 validation: every refusal has a reason code and a sentence naming the value."""

from __future__ import annotations

import json

import pytest
from spine_events import ACCOUNTS, event, jsonl

from streams.schema import RefusalReason, UsageEvent, make_event_id, to_microseconds
from streams.validate import check_rules, decode_messages

pytestmark = pytest.mark.unit


def verdicts(*lines: bytes) -> list[tuple[str | None, str | None]]:
    frame, early = decode_messages([("test", b"\n".join(lines))])
    checked = check_rules(frame, ACCOUNTS)
    return [(r.reason_code, r.reason) for r in early] + list(
        zip(checked["reason_code"].to_list(), checked["reason"].to_list(), strict=True)
    )


def test_a_valid_event_passes() -> None:
    assert verdicts(jsonl(event())) == [(None, None)]


@pytest.mark.parametrize(
    ("change", "code", "words"),
    [
        ({"interval_start": "2026-11-02T00:00:00", "interval_end": "2026-11-02T00:01:00"}, "no_timezone", "no timezone"),
        ({"interval_start": "2026-11-02T09:00:00+09:00"}, "not_utc", "not UTC"),
        ({"interval_start": "yesterday"}, "bad_timestamp", "yesterday"),
        ({"gpu_seconds": -5.0}, "bad_duration", "-5.0"),
        ({"gpu_seconds": 61.0}, "bad_duration", "61.0"),
        ({"busy_gpu_seconds": 70.0}, "bad_busy", "70.0"),
        ({"interval_end": "2026-11-02T00:00:00Z"}, "bad_interval", "0 s"),
        ({"interval_end": "2026-11-02T00:00:07Z"}, "bad_interval", "7 s"),
        ({"entity": "acme"}, "unknown_entity", "acme"),
        ({"project": "moonshot"}, "unknown_project", "moonshot"),
        ({"project": "skt-ax"}, "project_of_other_entity", "belongs to skt"),
        ({"schema_version": 2}, "bad_schema_version", "2"),
        ({"gpu_uuid": "0", "device_uuid": "0"}, "bad_uuid", "GPU-"),
        ({"gpu_fraction": 0.5}, "bad_fraction", "0.5"),
        ({"energy_joules": -1.0}, "bad_energy", "-1.0"),
        ({"samples": 7}, "bad_samples", "7"),
        ({"event_id": "random-id"}, "bad_event_id", "random-id"),
        ({"node": ""}, "empty_field", "empty"),
    ],
)
def test_each_rule_refuses_with_a_reason(change: dict, code: str, words: str) -> None:
    [(got_code, reason)] = verdicts(jsonl(event(**change)))
    assert got_code == code
    assert words in reason


def test_an_interval_not_aligned_to_its_length_is_refused() -> None:
    start = "2026-11-02T00:00:30Z"
    [(code, reason)] = verdicts(jsonl(event(start)))
    assert code == RefusalReason.NOT_ALIGNED
    assert start in reason


def test_unattributed_usage_of_a_known_entity_is_accepted() -> None:
    assert verdicts(jsonl(event(project="unattributed", job_id=None))) == [(None, None)]


def test_malformed_lines_are_refused_and_the_rest_of_the_message_goes_on() -> None:
    good = json.dumps(event()).encode()
    wrong_type = json.dumps(event(gpu_seconds="sixty")).encode()
    missing = json.dumps({k: v for k, v in event().items() if k != "entity"}).encode()
    result = verdicts(b"{not json", b"[1, 2]", wrong_type, missing, good)
    codes = [code for code, _ in result]
    assert sorted(c for c in codes if c) == sorted(["not_json", "not_an_object", "wrong_type", "missing_field"])
    assert codes.count(None) == 1
    assert any("gpu_seconds is str" in (r or "") for _, r in result)
    assert any("entity" in (r or "") for c, r in result if c == "missing_field")


def test_fast_and_slow_paths_agree() -> None:
    """The same events give the same verdicts whether the message decodes in one go or not."""
    events = [event(), event(entity="acme"), event(gpu_seconds=99.0), event("2026-11-02T00:00:30Z")]
    fast = verdicts(jsonl(*events))
    slow = verdicts(jsonl(*events), b"not json")
    assert slow[1:] == fast  # the early refusal comes first, then the same verdicts in order


def test_event_id_is_deterministic_and_sensitive_to_each_part() -> None:
    a = make_event_id("n1", "GPU-1", "2026-11-01T00:00:00Z")
    assert a == make_event_id("n1", "GPU-1", "2026-11-01T00:00:00Z")
    assert len({a, make_event_id("n2", "GPU-1", "2026-11-01T00:00:00Z"),
                make_event_id("n1", "GPU-2", "2026-11-01T00:00:00Z"),
                make_event_id("n1", "GPU-1", "2026-11-01T00:01:00Z")}) == 4


def test_usage_event_round_trips_through_the_wire_form() -> None:
    wire = event(flags=["partial_interval"])
    model = UsageEvent.from_dict(wire)
    assert json.loads(model.to_json()) == wire
    assert list(json.loads(model.to_json())) == list(wire)  # contract field order


def test_microseconds_round_half_to_even_once() -> None:
    assert to_microseconds(60 / 7) == 8_571_429
    assert to_microseconds(0.0000005) == 0  # half to even
    assert to_microseconds(0.0000015) == 2


def test_column_wise_event_id_check_agrees_with_the_reference() -> None:
    """The polars-hash path and the hashlib path give the same verdicts (nulls included)."""
    import polars as pl

    from streams.validate import _event_ids_ok_plugin, _event_ids_ok_python

    good = event()
    frame = pl.DataFrame(
        {
            "node": ["n1", "n1", None, "n2"],
            "device_uuid": ["GPU-0001", "GPU-0001", "GPU-0001", "GPU-0001"],
            "interval_start": [good["interval_start"]] * 4,
            "event_id": [good["event_id"], "0" * 32, good["event_id"], good["event_id"]],
        }
    )
    assert _event_ids_ok_plugin(frame).to_list() == [True, False, False, False]
    assert _event_ids_ok_python(frame).to_list() == [True, False, False, False]
