"""gpuledger's storage on a real S3-compatible server (SeaweedFS, scripts/s3.sh): the same
pipeline, roll-up, compaction and close as on a local disk, byte for byte."""

from __future__ import annotations

from pathlib import Path

import pytest
from s3_server import S3Endpoint

from accounting.close import close_month
from accounting.registry import load_registry
from gpuledger.wiring import accounts_of
from storage.compaction import compact_dataset
from storage.dataset import Store
from storage.errors import StorageError
from storage.manifest import verify
from storage.rollup import roll_up
from streams.pipeline import BatchProcessor, Position

pytestmark = [pytest.mark.integration, pytest.mark.s3]

REGISTRY = load_registry(Path(__file__).resolve().parents[2] / "examples" / "registry.toml")
PERIOD = "2026-11"


def options(s3: S3Endpoint) -> dict[str, str]:
    return {"AWS_ENDPOINT_URL": s3.endpoint_url, "AWS_ACCESS_KEY_ID": s3.access_key,
            "AWS_SECRET_ACCESS_KEY": s3.secret_key, "AWS_REGION": s3.region}


def month_messages():
    """A small month: 4 nodes × 2 GPUs, hourly events on a few days, with re-sends."""
    import json

    from streams.schema import make_event_id

    messages = []
    for day in (3, 4, 17, 30):
        for hour in (0, 7, 14, 15, 23):
            for node in range(4):
                lines = []
                for gpu in range(2):
                    start = f"2026-11-{day:02d}T{hour:02d}:00:00Z"
                    device = f"GPU-{node}-{gpu}"
                    lines.append(json.dumps({
                        "schema_version": 1, "event_id": make_event_id(f"n{node}", device, start),
                        "site": "dc1", "node": f"n{node}", "gpu_uuid": device, "device_uuid": device,
                        "gpu_model": "NVIDIA B200", "mig_profile": None, "gpu_fraction": 1.0,
                        "entity": "gov" if node < 2 else "samsung",
                        "project": "snu-llm" if node < 2 else "samsung-foundry-ai", "job_id": None,
                        "interval_start": start, "interval_end": start.replace(":00:00Z", ":01:00Z"),
                        "gpu_seconds": 60.0, "busy_gpu_seconds": 30.0 + gpu, "energy_joules": 1000.0,
                        "samples": 6, "expected_samples": 6, "flags": [],
                    }))
                messages.append(("\n".join(lines) + "\n").encode())
    return messages + messages[:10]  # a spool re-sending ten node-intervals


def run_month(store: Store) -> bytes:
    processor = BatchProcessor(store, accounts_of(REGISTRY))
    payloads = month_messages()
    for first in range(0, len(payloads), 16):
        chunk = payloads[first : first + 16]
        positions = [Position("g/gpu.usage.v1/0", first + i) for i in range(len(chunk))]
        processor.process([(f"gpu.usage.v1/0@{p.offset}", m) for p, m in zip(positions, chunk, strict=True)], positions)
    roll_up(store)
    compact_dataset(store, "raw")
    result = close_month(store, REGISTRY, PERIOD)
    assert result.billing_lines > 0
    return store.read_bytes(store.path("ledgers/billing", f"period={PERIOD}", "billing.parquet"))


def test_the_same_month_closes_to_the_same_ledger_bytes_on_s3_and_on_a_local_disk(
    s3: S3Endpoint, s3_prefix: str, tmp_path: Path
) -> None:
    local = run_month(Store(tmp_path / "local"))
    remote_store = Store(s3.url(s3_prefix, "data"), s3_options=options(s3))
    remote = run_month(remote_store)
    assert remote == local
    assert verify(remote_store).ok
    usage_files = remote_store.files("usage_hourly")
    assert usage_files and all(f.startswith(f"{s3.bucket}/{s3_prefix}/data/usage_hourly/") for f in usage_files)


def test_refused_credentials_name_the_setting_and_never_show_the_secret(s3: S3Endpoint, s3_prefix: str) -> None:
    wrong = options(s3) | {"AWS_SECRET_ACCESS_KEY": "not-the-secret-" + s3.secret_key[:4]}
    with pytest.raises(StorageError) as refused:
        store = Store(s3.url(s3_prefix, "data"), s3_options=wrong)
        BatchProcessor(store, accounts_of(REGISTRY)).process([("m", month_messages()[0])])
    message = str(refused.value)
    assert "AWS_ACCESS_KEY_ID" in message and "AWS_SECRET_ACCESS_KEY" in message
    assert wrong["AWS_SECRET_ACCESS_KEY"] not in message and s3.secret_key not in message


def test_the_cli_closes_and_verifies_a_month_on_s3(s3: S3Endpoint, s3_prefix: str) -> None:
    """`gpuledger close` and `gpuledger verify --all` with `--data-dir s3://…` and the standard
    AWS_* variables, as an operator runs them; the secret never appears in their output."""
    import os
    import subprocess
    import sys

    url = s3.url(s3_prefix, "data")
    store = Store(url, s3_options=options(s3))
    processor = BatchProcessor(store, accounts_of(REGISTRY))
    payloads = month_messages()
    processor.process([(f"gpu.usage.v1/0@{i}", m) for i, m in enumerate(payloads)],
                      [Position("g/gpu.usage.v1/0", i) for i in range(len(payloads))])
    env = {**os.environ, **s3.environ(), "GPULEDGER_CONFIG": "", "COLUMNS": "200"}
    repo = Path(__file__).resolve().parents[2]
    for args in (["close", "--month", PERIOD], ["verify", "--all"]):
        done = subprocess.run([sys.executable, "-m", "gpuledger", *args, "--data-dir", url,
                               "--registry", str(repo / "examples" / "registry.toml")],
                              env=env, cwd=repo, capture_output=True, text=True, timeout=300, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        assert s3.secret_key not in done.stdout + done.stderr
    assert "verify ok" in done.stdout and "every live table file re-hashed" in done.stdout
    assert Store(url, s3_options=options(s3)).exists(f"{s3.bucket}/{s3_prefix}/data/manifests/{PERIOD}.json")
