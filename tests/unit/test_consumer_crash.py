"""Crash safety: a consumer stopped between the Parquet write and the offset commit, restarted,
produces the same ledger as an uninterrupted run (docs/architecture.md invariants 1 and 3)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from spine_events import event, jsonl

from accounting.close import close_month
from accounting.registry import load_registry
from gpuledger.wiring import accounts_of
from storage.dataset import Store
from storage.rollup import rolled_up
from storage.schemas import USAGE_HOURLY
from streams.consumer import StreamConsumer
from streams.localbus import LocalBus
from streams.pipeline import BatchProcessor

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]
REGISTRY = load_registry(REPO / "examples/registry.toml")


class Crash(Exception):
    pass


def publish_month(bus: LocalBus) -> int:
    producer = bus.producer("gpu.usage.v1")
    count = 0
    for day in range(1, 11):
        events = [
            event(f"2026-10-{day:02d}T{h:02d}:{m:02d}:00Z", node=f"n{day % 3}", gpu=f"GPU-{day % 3}",
                  project="snu-llm" if h % 2 else "kaist-vision")
            for h in range(0, 24, 6)
            for m in range(0, 60, 10)
        ]
        producer.send(f"n{day % 3}", jsonl(*events))
        count += len(events)
    producer.flush()
    return count


def consumer(root: Path, before_commit=None) -> StreamConsumer:
    store = Store(root / "data")
    bus = LocalBus(root / "bus")
    return StreamConsumer(
        bus.consumer("gpu.usage.v1", "g"),
        BatchProcessor(store, accounts_of(REGISTRY)),
        max_batch_records=3,
        before_commit=before_commit,
    )


def ledger_bytes(root: Path) -> bytes:
    close_month(rolled_up(Store(root / "data")), REGISTRY, "2026-10")
    return (root / "data/ledgers/billing/period=2026-10/billing.parquet").read_bytes()


def test_a_crash_between_write_and_commit_changes_nothing(tmp_path: Path) -> None:
    # given the same month on two buses
    calm, crashy = tmp_path / "calm", tmp_path / "crashy"
    published = publish_month(LocalBus(calm / "bus"))
    publish_month(LocalBus(crashy / "bus"))

    # when one consumer runs through, and the other dies after its second batch was written
    consumer(calm).run(until_idle=True, idle_polls=1)
    batches = []

    def die_on_second(result):
        batches.append(result)
        if len(batches) == 2:
            raise Crash

    with pytest.raises(Crash):
        consumer(crashy, before_commit=die_on_second).run(until_idle=True, idle_polls=1)
    totals = consumer(crashy).run(until_idle=True, idle_polls=1)  # restart

    # then the restart resumed where storage's offsets say, after the stored batch (the bus's
    # saved position was one batch behind: storage wins), and the ledgers are byte-identical
    assert batches[1].messages > 0
    assert totals.replayed == 0 and totals.duplicates == 0
    stored = sum(rolled_up(Store(crashy / "data")).scan("usage_hourly", USAGE_HOURLY).collect()["events"])
    assert stored == published
    assert ledger_bytes(crashy) == ledger_bytes(calm)


def test_sigkill_between_write_and_commit(tmp_path: Path) -> None:
    """The same with a real SIGKILL: the process dies without any chance to clean up."""
    published = publish_month(LocalBus(tmp_path / "bus"))
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_consumer_crash import consumer
        from pathlib import Path
        seen = []
        def kill(result):
            seen.append(result)
            if len(seen) == 3:
                os.kill(os.getpid(), signal.SIGKILL)
        consumer(Path({str(tmp_path)!r}), before_commit=kill).run(until_idle=True, idle_polls=1)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env={**os.environ}, timeout=120)
    assert proc.returncode == -9
    consumer(tmp_path).run(until_idle=True, idle_polls=1)
    hourly = rolled_up(Store(tmp_path / "data")).scan("usage_hourly", USAGE_HOURLY).collect()
    assert hourly["events"].sum() == published
    assert hourly["gpu_microseconds"].sum() == published * 60_000_000
