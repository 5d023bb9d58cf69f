"""What a batch's checkpoint costs: pinning one version of ``raw`` and ``quarantine`` per batch.

    PYTHONPATH=.:bench .venv/bin/python bench/bench_checkpoint.py [--commits 1000] [--rounds 200]

A ``raw`` table is given ``--commits`` commits (offsets only, as empty batches make: the log is
what a checkpoint reads, not the data), checkpointed every 100 commits as delta-rs does. Then,
per round, another writer commits once (another member's batch) and the checkpoint is advanced
(what :meth:`streams.checkpoint.Checkpoints.open` does per table at the start of every batch).

Beside it, in the same run, the peer: the same refresh through the table's shared snapshot
(``DeltaDataset.table()``, what the consumer did before the pin), and opening the table afresh
(``DeltaTable(uri)``: the first checkpoint of a process, or the one after a conflict).
Process CPU-seconds (user+sys) and wall per call; writes ``bench/out/checkpoint.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from deltalake import DeltaTable

from storage.dataset import Store


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def measure(call, rounds: int, between=None) -> dict[str, float]:
    cpu = wall = 0.0
    for _ in range(rounds):
        if between is not None:
            between()
        c0, w0 = _cpu(), time.perf_counter()
        call()
        cpu += _cpu() - c0
        wall += time.perf_counter() - w0
    return {"cpu_ms": 1000 * cpu / rounds, "wall_ms": 1000 * wall / rounds}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--commits", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp))
        raw = store.table("raw")
        raw.create_if_missing()
        other = Store(Path(tmp)).table("raw")
        for n in range(args.commits):
            other.table()
            other.commit([], txns={"g/t/1": n})
            if n % 100 == 99:
                other.table().create_checkpoint()
        counter = iter(range(args.commits, 10**9))

        def another_member_commits() -> None:
            other.table()
            other.commit([], txns={"g/t/1": next(counter)})

        pin = raw.pinned()
        pin.advance()
        results = {
            "pinned advance, 1 new commit": measure(pin.advance, args.rounds, another_member_commits),
            "pinned advance, 0 new commits": measure(pin.advance, args.rounds),
            "shared snapshot refresh, 1 new commit (peer)": measure(raw.table, args.rounds, another_member_commits),
            "open afresh (first batch, after a conflict)": measure(lambda: DeltaTable(raw.uri), max(10, args.rounds // 10)),
        }
    print(f"raw with {args.commits} commits (checkpoint every 100), {args.rounds} rounds")
    for name, r in results.items():
        print(f"  {name:48s} {r['cpu_ms']:7.2f} CPU-ms  {r['wall_ms']:7.2f} ms wall")
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    (out / "checkpoint.json").write_text(json.dumps({"commits": args.commits, "rounds": args.rounds, **results}, indent=2))


if __name__ == "__main__":
    main()
