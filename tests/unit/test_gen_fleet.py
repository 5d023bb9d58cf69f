"""The national load generator (bench/gen_fleet.py): its events are the contract's, its mix
is the registry's, and its faults are exactly the ones it says it made.

Given a small fleet with generous fault rates, when every message goes through the
consumer's BatchProcessor into a temporary store, then nothing is refused, the stored events
are exactly the distinct ones generated (generated - duplicates), and their GPU time is the
total the generator counted.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from datetime import UTC, date, datetime
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # bench/ is not an installed package
    sys.path.insert(0, str(REPO))

from accounting.registry import load_registry  # noqa: E402
from bench.gen_fleet import Counts, FleetOptions, fleet, generate, national_mix, to_json_lines  # noqa: E402
from gpuledger.wiring import accounts_of  # noqa: E402
from storage.dataset import Store  # noqa: E402
from storage.rollup import roll_up  # noqa: E402
from streams.pipeline import BatchProcessor  # noqa: E402
from streams.schema import make_event_id  # noqa: E402
from streams.wire import encode_arrow  # noqa: E402

pytestmark = pytest.mark.unit

REGISTRY = load_registry(REPO / "examples" / "registry.toml")
START = datetime(2026, 11, 2, 14, 50, tzinfo=UTC)  # crosses 15:00 UTC = 00:00 KST (a new KST date)
FAULTY = FleetOptions(
    gpus=160, mig_share=0.25, late_fraction=0.05, late_minutes=(2, 15), duplicate_fraction=0.05,
    duplicate_delay_minutes=3, partial_fraction=0.1, key_groups=4, max_message_events=300, seed=7,
)


def run(options: FleetOptions = FAULTY, minutes: int = 20) -> tuple[list, Counts]:
    counts = Counts()
    return list(generate(START, minutes, options, REGISTRY, counts)), counts


def test_the_mix_follows_the_registry_allocations() -> None:
    mix = national_mix(REGISTRY, date(2026, 11, 2), 325_000)
    assert sum(n for _, _, n in mix) == 325_000
    by_entity = Counter()
    for entity, model, n in mix:
        by_entity[entity] += n
        assert n == REGISTRY.entities[entity].allocated(model, date(2026, 11, 2))  # full scale: the allocation itself
    new = {e: sum(n for e2, m, n in mix if e2 == e and m != "NVIDIA H100 80GB HBM3") for e in by_entity}
    assert new == {"gov": 50_000, "samsung": 50_000, "hyundai": 50_000, "skt": 50_000, "naver": 60_000}
    assert sum(n for _, m, n in mix if m == "NVIDIA H100 80GB HBM3") == 65_000
    scaled = national_mix(REGISTRY, date(2026, 11, 2), 1_000)
    assert sum(n for _, _, n in scaled) == 1_000
    assert {e for e, _, _ in scaled} == set(REGISTRY.entities)


def test_devices_are_known_to_the_registry_and_mig_slices_fill_their_gpu() -> None:
    devices = fleet(REGISTRY, date(2026, 11, 2), FleetOptions(gpus=2_000, mig_share=0.1, seed=3))
    assert devices["gpu_uuid"].n_unique() == 2_000
    assert devices["device_uuid"].n_unique() == devices.height
    owners = {name: p.entity for name, p in REGISTRY.projects.items()}
    attributed = devices.filter(pl.col("project") != "unattributed")
    assert all(owners[p] == e for p, e in attributed.select("project", "entity").unique().iter_rows())
    assert (devices.filter(pl.col("project") == "unattributed")["job_id"].null_count()
            == devices.filter(pl.col("project") == "unattributed").height)
    per_gpu = devices.group_by("gpu_uuid").agg(pl.col("gpu_fraction").sum(), pl.len())
    assert per_gpu.filter((pl.col("gpu_fraction") - 1.0).abs() > 1e-9).height == 0
    split = per_gpu.filter(pl.col("len") > 1).height
    assert 0.05 < split / 2_000 < 0.15  # mig_share 0.1, drawn per GPU
    assert set(devices["gpu_model"]) <= set(REGISTRY.gpu_models())


def test_event_ids_are_the_contracts() -> None:
    messages, _ = run(FleetOptions(gpus=40, mig_share=0.3, seed=1), minutes=3)
    table = pa.concat_tables([m.events for m in messages])
    expected = [
        make_event_id(n, d, s)
        for n, d, s in zip(table["node"].to_pylist(), table["device_uuid"].to_pylist(),
                           table["interval_start"].to_pylist(), strict=True)
    ]
    assert table["event_id"].to_pylist() == expected


def test_every_event_is_accepted_and_totals_reconcile(tmp_path: Path) -> None:
    messages, counts = run()
    assert counts.duplicates > 0 and counts.late > 0  # the faults are really there
    assert counts.events == counts.distinct + counts.duplicates == sum(m.events.num_rows for m in messages)
    store = Store(tmp_path)
    processor = BatchProcessor(store, accounts_of(REGISTRY))
    accepted = duplicates = refused = 0
    for number in range(0, len(messages), 7):  # several messages per batch, as the consumer polls
        batch = [(f"gen/{number + i}", encode_arrow(m.events)) for i, m in enumerate(messages[number : number + 7])]
        result = processor.process(batch)
        accepted, duplicates, refused = accepted + result.accepted, duplicates + result.duplicates, refused + result.refused
    assert (refused, accepted, duplicates) == (0, counts.distinct, counts.duplicates)
    raw = ds.dataset(store.files("raw"), format="parquet").to_table()
    assert raw.num_rows == counts.distinct == len(set(raw["event_id"].to_pylist()))
    roll_up(store)
    hourly = ds.dataset(store.files("usage_hourly"), format="parquet").to_table()
    assert sum(hourly["gpu_microseconds"].to_pylist()) == counts.gpu_microseconds
    assert store.files("quarantine") == []


def test_late_events_and_duplicates_are_sent_when_the_generator_says() -> None:
    messages, counts = run()
    delays: dict[str, list[float]] = {}
    for message in messages:
        for event_id, end in zip(message.events["event_id"].to_pylist(),
                                 message.events["interval_end"].to_pylist(), strict=True):
            ended = datetime.strptime(end, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
            delays.setdefault(event_id, []).append((message.sent_at - ended).total_seconds() / 60)
    first = [min(d) for d in delays.values()]
    # on time: sent at the end of its interval; late: 2 to 15 minutes after it (FAULTY)
    assert sum(1 for d in first if d == 0) == counts.distinct - counts.late
    assert sum(1 for d in first if 2 <= d <= 15) == counts.late
    assert sum(len(d) - 1 for d in delays.values()) == counts.duplicates
    assert [m.sent_at for m in messages] == sorted(m.sent_at for m in messages)


def test_the_same_seed_gives_the_same_events() -> None:
    first, _ = run(minutes=5)
    second, _ = run(minutes=5)
    assert [m.key for m in first] == [m.key for m in second]
    assert all(a.events.equals(b.events) for a, b in zip(first, second, strict=True))


def test_json_lines_are_the_contract_on_disk(tmp_path: Path) -> None:
    messages, counts = run(minutes=2)
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(to_json_lines(m.events) for m in messages))
    store = Store(tmp_path / "data")
    result = BatchProcessor(store, accounts_of(REGISTRY)).process([(str(path), path.read_bytes())])
    assert (result.refused, result.accepted) == (0, counts.distinct)


def test_the_command_line_has_help_and_generates() -> None:
    help_text = subprocess.run([sys.executable, "-m", "bench.gen_fleet", "--help"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout
    assert "--gpus" in help_text and "--publish" in help_text
    done = subprocess.run([sys.executable, "-m", "bench.gen_fleet", "--gpus", "50", "--minutes", "2", "--null"],
                          cwd=REPO, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "events/s" in done.stderr
