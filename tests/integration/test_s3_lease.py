"""One lease for the close and the upkeep on a real S3 server (SeaweedFS): two ``gpuledger
close`` processes and an hourly upkeep started at the same moment on one bucket (issue 15)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from s3_server import S3Endpoint
from test_s3_storage import PERIOD, REGISTRY, month_messages, options

from accounting.close import closed_periods
from gpuledger.wiring import accounts_of
from storage.dataset import Store
from storage.deltalog import commit_actions
from storage.lease import LEASE_KEY, LEASE_TABLE
from storage.manifest import sealed_periods, verify
from streams.pipeline import BatchProcessor, Position

pytestmark = [pytest.mark.integration, pytest.mark.s3]

UPKEEP = """
import sys
from datetime import UTC, datetime
from accounting.scheduler import run_compaction
from storage.dataset import Store
run = run_compaction(Store(sys.argv[1]), datetime.now(UTC), retention_hours=0)
print("upkeep", "locked_out" if run.locked_out else f"ran compacted={len(run.compacted)} vacuumed={sum(run.vacuumed.values())}")
"""


def test_two_closes_and_an_upkeep_at_once_on_s3_seal_once_and_verify(s3: S3Endpoint, s3_prefix: str, tmp_path: Path) -> None:
    url = s3.url(s3_prefix, "data")
    store = Store(url, s3_options=options(s3))
    processor = BatchProcessor(store, accounts_of(REGISTRY))
    payloads = month_messages()
    for first in range(0, len(payloads), 8):  # many small raw files: compaction has work to do
        chunk = payloads[first : first + 8]
        processor.process([(f"gpu.usage.v1/0@{first + i}", m) for i, m in enumerate(chunk)],
                          [Position("g/gpu.usage.v1/0", first + i) for i in range(len(chunk))])
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, **s3.environ(), "GPULEDGER_CONFIG": "", "COLUMNS": "200"}
    close = [sys.executable, "-m", "gpuledger", "close", "--month", PERIOD, "--data-dir", url,
             "--registry", str(repo / "examples" / "registry.toml")]
    procs = [
        subprocess.Popen(close, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True),
        subprocess.Popen(close, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True),
        subprocess.Popen([sys.executable, "-c", UPKEEP, url], env=env, cwd=tmp_path,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True),
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    # one close sealed the month, the other found it closed; the upkeep ran before, after, or skipped
    assert sum(f"closed {PERIOD}" in o for o in outputs[:2]) == 1, outputs
    assert sum("was closed already" in o for o in outputs[:2]) == 1, outputs
    assert outputs[2].startswith("upkeep "), outputs[2]
    assert sealed_periods(store) == [PERIOD] == closed_periods(store)
    report = verify(store, every_file=True)
    assert report.ok, [str(d) for d in report.differences]
    # the lease lives in the bucket: every taking has its own, strictly increasing fencing token
    holders = []
    version = 1
    while (actions := commit_actions(store, LEASE_TABLE, version)) is not None:
        for action in actions:
            if LEASE_KEY in (action.get("commitInfo") or {}):
                holders.append(json.loads(action["commitInfo"][LEASE_KEY]))
        version += 1
    holder_of: dict[int, set[str]] = {}
    for h in holders:
        holder_of.setdefault(h["token"], set()).add(h["holder"])
    tokens = [h["token"] for h in holders]
    assert tokens == sorted(tokens) and all(len(who) == 1 for who in holder_of.values())
    upkeep_ran = "upkeep ran" in outputs[2]
    assert len(holder_of) == 2 + upkeep_ran, (holder_of, outputs[2])
    print(outputs[2].strip(), {t: sorted(w)[0].split("@")[0] for t, w in holder_of.items()})
    assert list(tmp_path.iterdir()) == []  # nothing local: no lock directory named after the URL


def test_eight_takers_at_once_on_s3_exactly_one_wins(s3: S3Endpoint, s3_prefix: str) -> None:
    """SeaweedFS refuses the second conditional put of the same log entry: of eight processes'
    worth of takers released at one barrier, one holds the lease, seven are told who does."""
    import threading

    from storage.lease import Lease, LeaseHeld

    url = s3.url(s3_prefix, "lease")
    Lease(Store(url, s3_options=options(s3)), "warm-up").state()  # the table exists before the race
    barrier = threading.Barrier(8)
    won: list[int] = []
    refused: list[str] = []

    def take(i: int) -> None:
        lease = Lease(Store(url, s3_options=options(s3)), f"taker-{i}")
        lease.state()
        barrier.wait()
        try:
            won.append(lease.acquire())
        except LeaseHeld as exc:
            refused.append(str(exc))

    threads = [threading.Thread(target=take, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert won == [1] and len(refused) == 7
    assert all("is held by taker-" in r for r in refused)
