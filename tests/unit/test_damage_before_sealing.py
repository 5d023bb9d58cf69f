"""A file changed after its commit is caught before it is sealed: every added file's SHA-256 is
recorded in the Delta log at commit time, the roll-up re-hashes a day's raw files before it
aggregates them, and ``damaged_files`` (``gpuledger verify --all``) names each one."""

from __future__ import annotations

from pathlib import Path

import pytest
from deltalake import DeltaTable
from spine_events import ACCOUNTS, event, jsonl

from storage.dataset import Store
from storage.deltalog import damaged_files, recorded_sha256
from storage.errors import StorageError
from storage.rollup import roll_up
from streams.pipeline import BatchProcessor

pytestmark = pytest.mark.unit


def stored_day(root: Path, batches: int = 3) -> Store:
    store = Store(root)
    processor = BatchProcessor(store, ACCOUNTS)
    for b in range(batches):
        processor.process([(f"m{b}", jsonl(*(event(f"2026-11-02T0{b}:{m:02d}:00Z") for m in range(20))))])
    return store


def test_every_committed_file_has_its_sha256_in_the_log_also_after_a_checkpoint(tmp_path: Path) -> None:
    store = stored_day(tmp_path)
    recorded = recorded_sha256(store, "raw")
    assert len(recorded) == 3 and all(len(sha or "") == 64 for sha in recorded.values())
    DeltaTable(str(tmp_path / "raw")).create_checkpoint()  # the record survives a checkpoint
    BatchProcessor(store, ACCOUNTS).process([("m9", jsonl(event("2026-11-02T05:00:00Z")))])
    after = recorded_sha256(store, "raw")
    assert len(after) == 4 and {k: after[k] for k in recorded} == recorded
    assert damaged_files(store, "raw") == []


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_damaged_raw_file_is_named_and_never_rolled_up(tmp_path: Path, damage: str) -> None:
    store = stored_day(tmp_path)
    victim = Path(store.files("raw")[1])
    data = bytearray(victim.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x01
    else:
        data = data[:100]
    victim.write_bytes(bytes(data))
    rel = victim.relative_to(tmp_path / "raw").as_posix()
    found = damaged_files(store, "raw")
    assert len(found) == 1 and found[0].startswith(f"raw/{rel}:")
    with pytest.raises(StorageError, match=rel.replace(".", r"\.")):
        roll_up(store)
    assert store.files("usage_hourly") == []  # nothing rolled up, nothing to seal
