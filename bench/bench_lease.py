"""What the one lease of close and upkeep costs per job (take + release), on a local disk or S3.

    python -m bench.bench_lease --data-dir /tmp/lease-bench            # local disk
    python -m bench.bench_lease --data-dir s3://gpuledger/lease-bench  # S3 (AWS_* variables)

Peer, measured in the same run on the same store: one hourly upkeep with nothing to do (roll-up,
compaction and vacuum that find no work, lease included), i.e. the smallest job that takes it.
Prints one JSON line per measure: wall ms and CPU ms (user+sys) per operation.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from datetime import UTC, datetime

from accounting.scheduler import run_compaction
from storage.dataset import Store
from storage.lease import Lease


def _measure(label: str, runs: int, step) -> dict:  # noqa: ANN001
    before = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    for i in range(runs):
        step(i)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {"measure": label, "runs": runs, "wall_ms_per_op": round(wall / runs * 1000, 2),
            "cpu_ms_per_op": round(cpu / runs * 1000, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args(argv)
    store = Store(args.data_dir)
    warm = Lease(store, "warm-up")  # creates the lease table
    warm.acquire()
    warm.release()

    def take_release(i: int) -> None:
        lease = Lease(store, f"bench-{i}")
        lease.acquire()
        lease.release()

    def take_check_release(i: int) -> None:
        lease = Lease(store, f"bench-c-{i}")
        lease.acquire()
        lease.check()
        lease.release()

    def upkeep(_i: int) -> None:
        assert not run_compaction(store, datetime.now(UTC)).locked_out

    for label, step in (("lease take+release", take_release), ("lease take+renew+release", take_check_release),
                        ("peer: empty hourly upkeep (lease included)", upkeep)):
        print(json.dumps({"store": store.display_root, **_measure(label, args.runs, step)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
