"""Builders of wire events for the spine's tests (schema v1 dicts and JSON Lines)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from streams.schema import make_event_id
from streams.validate import Accounts

ACCOUNTS = Accounts(
    entities=frozenset({"gov", "samsung", "skt"}),
    project_entity={"snu-llm": "gov", "kaist-vision": "gov", "samsung-foundry-ai": "samsung", "skt-ax": "skt"},
)


def ts(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def event(
    start: str = "2026-11-02T00:00:00Z",
    *,
    node: str = "n1",
    gpu: str = "GPU-0001",
    device: str | None = None,
    interval_s: int = 60,
    **fields,
) -> dict:
    device = device or gpu
    end = (ts(start) + timedelta(seconds=interval_s)).strftime("%Y-%m-%dT%H:%M:%SZ")
    base = {
        "schema_version": 1,
        "event_id": make_event_id(node, device, start),
        "site": "dc1",
        "node": node,
        "gpu_uuid": gpu,
        "device_uuid": device,
        "gpu_model": "NVIDIA B200",
        "mig_profile": None,
        "gpu_fraction": 1.0,
        "entity": "gov",
        "project": "snu-llm",
        "job_id": "slurm:1",
        "interval_start": start,
        "interval_end": end,
        "gpu_seconds": float(interval_s),
        "busy_gpu_seconds": interval_s / 2,
        "energy_joules": 1000.0,
        "samples": 6,
        "expected_samples": 6,
        "flags": [],
    }
    base.update(fields)
    return base


def jsonl(*events: dict) -> bytes:
    return "\n".join(json.dumps(e) for e in events).encode()
