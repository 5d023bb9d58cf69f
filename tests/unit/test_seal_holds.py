"""A seal covers everything it priced, and nothing moves under it (issue 15).

Each test is a scene an operator, a finance clerk or an auditor lives through: the hourly job
firing while a close seals, a garbled manifest then a late event, a sealed month exported with
another registry, a project added, a month consumed but never rolled up, the same events cut
into other batches. Every file is read back by an independent reader (DuckDB) or by ``verify``.
"""

from __future__ import annotations

import hashlib
import json
import threading
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import duckdb
import pytest
from spine_events import event, jsonl

from accounting.close import close_month
from accounting.registry import load_registry, loads_registry
from accounting.scheduler import RegistryCloser, ScheduleConfig, catch_up, run_compaction, run_due_closes
from accounting.sealed import SealedRegistryError, canonical_registry
from gpuledger.wiring import accounts_of
from storage.compaction import compact_dataset, vacuum
from storage.dataset import Store
from storage.errors import StorageError
from storage.lease import hold
from storage.manifest import SealUnreadable, read_manifest, sealed_files, verify
from storage.rollup import roll_up
from streams.pipeline import BatchProcessor

pytestmark = pytest.mark.unit

KST = ZoneInfo("Asia/Seoul")
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "registry.toml"
REGISTRY = load_registry(EXAMPLES)


def _events(day: int, minutes: range, *, project: str = "snu-llm", gpu: str = "GPU-0001", hour: int = 3) -> list[dict]:
    entity = REGISTRY.projects[project].entity if project in REGISTRY.projects else "gov"
    return [
        event(f"2026-11-{day:02d}T{hour:02d}:{m:02d}:00Z", gpu=gpu, project=project, entity=entity,
              energy_joules=1000.0 + m / 7)
        for m in minutes
    ]


def _consume(store: Store, *batches: list[dict], registry=REGISTRY) -> None:
    processor = BatchProcessor(store, accounts_of(registry))
    for i, batch in enumerate(batches):
        processor.process([(f"b{i}-{len(batch)}-{batch[0]['event_id']}", jsonl(*batch))])


def _on_disk(store: Store, rel: str) -> bool:
    return store.exists(store.path(rel))


# -- the hourly job and the close share one lease ------------------------------------------------
def test_the_hourly_job_firing_while_a_close_seals_moves_nothing_and_vacuum_keeps_every_sealed_file(tmp_path: Path) -> None:
    # given a day of November consumed and rolled up, and a close of November under way
    store = Store(tmp_path)
    _consume(store, _events(2, range(0, 20)), _events(2, range(20, 30)))
    runs = []

    class _HourlyJobFiresNow(Store):
        fired = False

        def scan_files(self, files, schema):  # the close reading its inputs: 01:05, the hourly job fires
            if not self.fired:
                self.fired = True
                _consume(Store(tmp_path), _events(2, range(30, 40)))  # and a late batch lands
                worker = threading.Thread(
                    target=lambda: runs.append(run_compaction(Store(tmp_path), datetime.now(UTC), retention_hours=0))
                )
                worker.start()
                worker.join()
            return super().scan_files(files, schema)

    closing = _HourlyJobFiresNow(tmp_path)
    with hold(closing, "gpuledger close") as lease:
        roll_up(closing, lease=lease)
        result = close_month(closing, REGISTRY, "2026-11", lease=lease)
    # then the hourly job found the lease held and touched nothing
    assert closing.fired and runs[0].locked_out
    # when more late usage lands (a later day, rolled up once already), and the hourly job runs
    _consume(store, _events(5, range(0, 5)))
    roll_up(store)
    _consume(store, _events(5, range(5, 9)))
    replaced = [f"raw/{p}" for p in store.table("raw").files() if "date=2026-11-05" in p]
    replaced += [f"usage_hourly/{p}" for p in store.table("usage_hourly").files() if "date=2026-11-05" in p]
    after = run_compaction(Store(tmp_path), datetime.now(UTC), retention_hours=0)
    assert not after.locked_out
    # then it really vacuumed the files it replaced, and not one sealed file
    assert len(replaced) == 3 and not any(_on_disk(store, p) for p in replaced)
    assert sum(after.vacuumed.values()) == 3
    doc = read_manifest(store, "2026-11")
    sealed = [f["path"] for f in doc["files"]] + [f["path"] for f in doc["reads"]["raw"]["files"]]
    assert all(_on_disk(store, p) for p in sealed)
    report = verify(store, every_file=True)
    assert report.ok, [str(d) for d in report.differences]
    billed = duckdb.sql(
        f"select sum(gpu_microseconds)::BIGINT from read_parquet('{tmp_path}/ledgers/billing/period=2026-11/billing.parquet')"
    ).fetchall()[0][0]
    assert billed == 30 * 60_000_000 and result.manifest_sha256
    # and the late usage is all in usage_hourly, beside the sealed files
    usage = duckdb.sql(f"select sum(gpu_microseconds)::BIGINT from read_parquet({store.files('usage_hourly')!r})")
    assert usage.fetchall()[0][0] == (30 + 10 + 9) * 60_000_000


def test_vacuum_never_deletes_a_file_a_manifest_seals_even_when_its_table_lost_it(tmp_path: Path) -> None:
    store = Store(tmp_path)
    _consume(store, _events(2, range(10)))
    roll_up(store)
    close_month(store, REGISTRY, "2026-11")
    usage = [p for p in sealed_files(store) if p.startswith("usage_hourly/")]
    # a bug (or a hand) removes the sealed file from the table's log
    store.commit_files("usage_hourly", [], removes=[p[len("usage_hourly/"):] for p in usage])
    assert vacuum(store, retention_hours=0)["usage_hourly"] == 0
    assert all(_on_disk(store, p) for p in usage)


# -- fail closed ----------------------------------------------------------------------------------
def test_a_garbled_manifest_then_a_late_event_stops_roll_up_compaction_vacuum_and_close(tmp_path: Path) -> None:
    # given a sealed November whose manifest was garbled, and a late event of a sealed day
    store = Store(tmp_path)
    _consume(store, _events(2, range(10)))
    roll_up(store)
    close_month(store, REGISTRY, "2026-11")
    before = store.table("usage_hourly").files()
    manifest = tmp_path / "manifests" / "2026-11.json"
    manifest.write_bytes(manifest.read_bytes()[:-40])
    _consume(store, _events(2, range(10, 12)), _events(2, range(12, 14)))
    # when the roll-up, compaction, vacuum or a close runs: each stops, naming the manifest
    for job in (
        lambda: roll_up(store),
        lambda: compact_dataset(store, "raw"),
        lambda: vacuum(store, retention_hours=0),
        lambda: close_month(store, REGISTRY, "2026-12"),
    ):
        with pytest.raises(SealUnreadable, match=r"manifests/2026-11\.json is unreadable") as caught:
            job()
        assert "\n" not in str(caught.value)
    # then the sealed files are still the table's
    assert set(before) <= set(store.table("usage_hourly").files())


def test_an_altered_manifest_is_unverifiable_and_stops_the_upkeep(tmp_path: Path) -> None:
    store = Store(tmp_path)
    _consume(store, _events(2, range(10)))
    roll_up(store)
    close_month(store, REGISTRY, "2026-11")
    manifest = tmp_path / "manifests" / "2026-11.json"
    doc = json.loads(manifest.read_text())
    doc["files"] = doc["files"][:-1]  # drop one sealed file from the seal, keep the JSON valid
    manifest.write_text(json.dumps(doc))
    _consume(store, _events(2, range(10, 12)))
    with pytest.raises(SealUnreadable, match="does not match its manifest_sha256"):
        roll_up(store)


def test_a_forged_raw_file_with_impossible_usage_is_never_rolled_up(tmp_path: Path) -> None:
    """A device-hour above an hour of GPU time (a writer that bypassed validation, its bytes
    recorded honestly at commit): the roll-up refuses it rather than sealing and billing it."""
    import polars as pl

    from storage.schemas import RAW_EVENTS

    store = Store(tmp_path)
    _consume(store, _events(2, range(10)))
    frame = pl.read_parquet(store.files("raw")).with_columns(
        pl.col("event_id").str.replace(r"^.", "f"), gpu_microseconds=pl.lit(3_600_000_000, pl.Int64)
    )
    forged = store.write_files("raw", frame.select(RAW_EVENTS.names), "forged")
    store.commit_files("raw", forged)
    with pytest.raises(StorageError, match="impossible usage"):
        roll_up(store)
    assert store.files("usage_hourly") == []


# -- the registry in the seal -------------------------------------------------------------------
def _other_registry(tmp_path: Path) -> tuple[Path, object]:
    text = EXAMPLES.read_text().replace("vat_percent = 10", "vat_percent = 0").replace(
        "삼성전자 Samsung Electronics", "Samsung (renamed)"
    )
    path = tmp_path / "other.toml"
    path.write_text(text)
    return path, load_registry(path)


def test_export_and_report_of_a_sealed_month_refuse_another_registry_and_keep_one_statement_number(tmp_path: Path) -> None:
    from accounting.export import export_month
    from accounting.report import render_report

    store = Store(tmp_path / "data")
    _consume(store, _events(2, range(30), project="samsung-foundry-ai"), _events(2, range(30), project="snu-llm", gpu="GPU-2"))
    roll_up(store)
    close_month(store, REGISTRY, "2026-11")
    other_path, other = _other_registry(tmp_path)
    # given another registry explicitly: refused, one line naming what differs
    for attempt in (
        lambda: export_month(store, "2026-11", tmp_path / "x", registry=other, registry_file=other_path, registry_explicit=True),
        lambda: render_report(store, "2026-11", tmp_path / "r", registry=other, registry_explicit=True),
    ):
        with pytest.raises(SealedRegistryError, match=r"vat_percent = 10 → vat_percent = 0") as caught:
            attempt()
        assert "\n" not in str(caught.value) and "Samsung (renamed)" in str(caught.value)
    # given the other registry only as a default (not asked for): the sealed one speaks
    first = export_month(store, "2026-11", tmp_path / "a", registry=other, registry_file=other_path)
    second = export_month(store, "2026-11", tmp_path / "b", registry=REGISTRY, registry_file=EXAMPLES,
                          registry_explicit=True)
    a = (tmp_path / "a" / "2026-11" / "finance" / "summary.csv").read_bytes()
    assert a == (tmp_path / "b" / "2026-11" / "finance" / "summary.csv").read_bytes()
    assert [t.total_krw for t in first.totals] == [t.total_krw for t in second.totals]
    # the pack's registry is the sealed copy, listed in SHA256SUMS
    pack = tmp_path / "a" / "2026-11" / "auditor"
    assert (pack / "registry.toml").read_text() == canonical_registry(REGISTRY)
    assert "ledgers/registry/period=2026-11/registry.toml" in (pack / "SHA256SUMS").read_text()
    doc = read_manifest(store, "2026-11")
    assert doc["registry_sha256"] == hashlib.sha256(canonical_registry(REGISTRY).encode()).hexdigest()


def test_the_sealed_registry_copy_is_verified_like_every_sealed_file(tmp_path: Path) -> None:
    store = Store(tmp_path)
    _consume(store, _events(2, range(10)))
    roll_up(store)
    close_month(store, REGISTRY, "2026-11")
    copy = tmp_path / "ledgers" / "registry" / "period=2026-11" / "registry.toml"
    copy.write_text(copy.read_text().replace("vat_percent = 10", "vat_percent = 0"))
    assert any(d.path == "ledgers/registry/period=2026-11/registry.toml" for d in verify(store).differences)
    from accounting.sealed import registry_for

    with pytest.raises(SealedRegistryError, match="does not match the registry_sha256"):
        registry_for(store, "2026-11", None, explicit=False)


# -- restatement only where a price can change ---------------------------------------------------
def test_adding_a_project_restates_nothing_it_does_not_price(tmp_path: Path) -> None:
    store = Store(tmp_path)
    october = [event(f"2026-10-0{d}T03:{m:02d}:00Z", project="snu-llm") for d in (2, 3) for m in range(5)]
    _consume(store, october)
    roll_up(store)
    close_month(store, REGISTRY, "2026-10")
    # given a registry with one more project (nothing else changed), and November usage
    added = loads_registry(
        EXAMPLES.read_text() + '\n[projects.new-lab]\nentity = "gov"\nclass = "university"\n', source="added.toml"
    )
    _consume(store, _events(2, range(5)), registry=added)
    roll_up(store)
    result = close_month(store, added, "2026-11")
    # then October is not re-read
    assert result.restated_periods == ()
    assert result.correction_lines == 0


def test_a_price_change_of_what_a_month_used_restates_it(tmp_path: Path) -> None:
    store = Store(tmp_path)
    _consume(store, [event(f"2026-10-02T03:{m:02d}:00Z", project="snu-llm") for m in range(5)])
    roll_up(store)
    close_month(store, REGISTRY, "2026-10")
    # the state pool's university discount changes: October used it
    repriced = loads_registry(
        EXAMPLES.read_text().replace("discounts = { university = 50,", "discounts = { university = 40,", 1),
        source="repriced.toml",
    )
    assert canonical_registry(repriced) != canonical_registry(REGISTRY)
    _consume(store, _events(2, range(5)))
    roll_up(store)
    assert close_month(store, repriced, "2026-11").restated_periods == ("2026-10",)


# -- catch-up from raw ---------------------------------------------------------------------------
def test_catch_up_closes_a_month_consumed_but_never_rolled_up(tmp_path: Path) -> None:
    # given October consumed into raw, never rolled up (usage_hourly does not exist)
    data = tmp_path / "data"
    store = Store(data)
    _consume(store, [event(f"2026-10-0{d}T03:{m:02d}:00Z", project="snu-llm") for d in (2, 3) for m in range(5)])
    assert store.files("usage_hourly") == []
    # when the scheduler starts in November
    run = catch_up(ScheduleConfig(data_dir=data, registry=EXAMPLES, clock_ref="fixed:2026-11-02T09:00:00+09:00"))
    # then October is rolled up and closed, billing every event
    assert run.closed == ("2026-10",)
    billed = duckdb.sql(
        f"select sum(gpu_microseconds)::BIGINT from read_parquet('{data}/ledgers/billing/period=2026-10/billing.parquet')"
    ).fetchall()[0][0]
    assert billed == 10 * 60_000_000
    assert verify(store).ok


def test_a_close_that_lost_its_lease_writes_nothing_more(tmp_path: Path) -> None:
    from storage.lease import Lease, LeaseLost

    store = Store(tmp_path)
    _consume(store, _events(2, range(10)))
    clock = [1_000_000.0]
    slow = Lease(store, "slow close", ttl_s=60, clock=lambda: clock[0])
    slow.acquire()
    clock[0] += 120  # it stalled past its expiry: another holder takes over
    Lease(store, "next upkeep", ttl_s=60, clock=lambda: clock[0]).acquire()
    with pytest.raises(LeaseLost):
        close_month(store, REGISTRY, "2026-11", lease=slow)
    assert not (tmp_path / "ledgers" / "billing" / "period=2026-11").exists()
    # a scheduler finding the lease held (by a live holder) closes nothing; once free, it closes
    with hold(store, "gpuledger close"):
        assert run_due_closes(store, RegistryCloser(EXAMPLES), datetime(2026, 12, 2, tzinfo=KST)).locked_out
    assert run_due_closes(store, RegistryCloser(EXAMPLES), datetime(2026, 12, 2, tzinfo=KST)).closed == ("2026-11",)
    assert verify(store).ok


# -- the same events, whatever the batches -------------------------------------------------------
def _sealed_month(data: Path, batches: list[list[dict]], *, consumers: int = 1) -> dict:
    store = Store(data)
    processors = [BatchProcessor(store, accounts_of(REGISTRY)) for _ in range(consumers)]
    for i, batch in enumerate(batches):
        processors[i % consumers].process([(f"{consumers}-{i}", jsonl(*batch))])
    roll_up(store)
    close_month(store, REGISTRY, "2026-11")
    return read_manifest(store, "2026-11")


def test_the_same_events_in_other_batches_seal_to_the_same_content_and_statement_numbers(tmp_path: Path) -> None:
    from accounting.figures import statement_number

    # 2 days × 4 devices × 3 hours of minutes, energy with more digits than a millijoule
    events = [
        event(f"2026-11-{d:02d}T{h:02d}:{m:02d}:00Z", gpu=f"GPU-{g}", energy_joules=1234.5678901 + (m * 7 + g) / 13)
        for d in (2, 3) for h in (1, 14, 15) for m in range(60) for g in range(4)
    ]
    one = _sealed_month(tmp_path / "one", [events])
    small = _sealed_month(tmp_path / "small", [events[i : i + 7] for i in range(0, len(events), 7)][::-1])
    two = _sealed_month(tmp_path / "two", [events[i : i + 100] for i in range(0, len(events), 100)], consumers=2)
    # the Delta versions differ (they count commits), what was sealed does not
    assert one["reads"]["raw"]["version"] != small["reads"]["raw"]["version"]
    assert one["content_sha256"] == small["content_sha256"] == two["content_sha256"]
    assert one["files"] == small["files"] == two["files"]
    for doc in (small, two):
        assert {k: v for k, v in doc.items() if k not in ("reads", "manifest_sha256")} == {
            k: v for k, v in one.items() if k not in ("reads", "manifest_sha256")
        }
    numbers = {statement_number("2026-11", "gov", d["content_sha256"]) for d in (one, small, two)}
    assert len(numbers) == 1
    for f in one["files"]:
        assert (tmp_path / "one" / f["path"]).read_bytes() == (tmp_path / "small" / f["path"]).read_bytes()


# -- the raw events in the seal --------------------------------------------------------------------
def test_the_auditor_pack_raw_events_re_derive_the_sealed_usage_hourly_with_the_documented_query(tmp_path: Path) -> None:
    from accounting.export import export_month
    from accounting.rawpack import REDERIVE_SQL

    # given a month with MIG slices, partial intervals, an event without energy, two days, late data
    store = Store(tmp_path / "data")
    mig = [event(f"2026-11-02T14:{m:02d}:00Z", gpu="GPU-9", device=f"MIG-9-{s}", mig_profile="3g.90gb",
                 gpu_fraction=3 / 7, gpu_seconds=60 * 3 / 7, busy_gpu_seconds=10.0, energy_joules=333.3333333 + s)
           for m in range(0, 60, 5) for s in range(2)]
    partial = [event(f"2026-11-03T15:{m:02d}:00Z", gpu="GPU-7", flags=["partial_interval"], gpu_seconds=30.0,
                     busy_gpu_seconds=3.0, energy_joules=None if m == 0 else 12.3456789) for m in range(10)]
    _consume(store, _events(2, range(30)), mig, partial)
    roll_up(store)
    close_month(store, REGISTRY, "2026-11")
    _consume(store, _events(2, range(30, 35)))  # late: not what the close read
    roll_up(store)
    # when the auditor pack is exported with the raw events
    result = export_month(store, "2026-11", tmp_path / "packs", raw_events=True)
    pack = result.out_dir / "auditor"
    readme = (pack / "README.md").read_text()
    assert REDERIVE_SQL in readme
    assert REDERIVE_SQL.strip() in (Path(__file__).resolve().parents[2] / "docs" / "auditors.md").read_text()
    # then every raw file's hash checks, and the documented query gives the sealed rows exactly
    for line in (pack / "raw-events.sha256").read_text().splitlines():
        digest, rel = line.split("  ", 1)
        assert hashlib.sha256((pack / rel).read_bytes()).hexdigest() == digest
    con = duckdb.connect()
    import os

    cwd = os.getcwd()
    os.chdir(pack)
    try:
        con.execute("SET TimeZone = 'UTC'")
        derived = REDERIVE_SQL.split(";", 1)[1].strip().rstrip(";").replace("ORDER BY ALL", "")
        sealed = "SELECT * FROM read_parquet('usage_hourly/**/*.parquet', hive_partitioning = false)"
        rows = con.sql(derived).fetchall()
        assert len(rows) == 30 // 60 + 1 + 2 + 1  # hour 03 GPU-0001, two MIG devices, the partial hour
        assert con.sql(f"({derived}) EXCEPT ALL ({sealed})").fetchall() == []
        assert con.sql(f"({sealed}) EXCEPT ALL ({derived})").fetchall() == []
    finally:
        os.chdir(cwd)


def test_a_scheduler_on_s3_keeps_the_url_and_writes_nothing_local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On S3 there was a local directory named ``s3:`` (the close lock and the job store)."""
    from apscheduler.schedulers.background import BackgroundScheduler

    from accounting.scheduler import configure

    monkeypatch.chdir(tmp_path)
    scheduler = configure(BackgroundScheduler(), ScheduleConfig(data_dir=Path("s3://bucket/prefix"), registry=EXAMPLES))
    assert {job.kwargs["data_dir"] for job in scheduler.get_jobs()} == {"s3://bucket/prefix"}
    assert list(tmp_path.iterdir()) == []


def test_an_upkeep_whose_lease_was_taken_over_cannot_commit_after_the_new_holder(tmp_path: Path) -> None:
    """Fencing: a holder that stalled past its expiry (a GC pause) wakes up and commits a roll-up;
    the table already records a newer holder's token, so the commit is refused."""
    from storage.lease import Lease, LeaseLost

    store = Store(tmp_path)
    clock = [2_000_000_000.0]
    stalled = Lease(store, "stalled upkeep", ttl_s=60, clock=lambda: clock[0])
    stalled.acquire()
    clock[0] += 120
    newer = Lease(store, "newer upkeep", ttl_s=60, clock=lambda: clock[0])
    newer.acquire()
    _consume(store, _events(2, range(5)))
    roll_up(store, lease=newer)
    _consume(store, _events(2, range(5, 10)))
    with pytest.raises(LeaseLost, match="newer than this holder's"):
        roll_up(store, lease=stalled)
    assert compact_dataset(store, "raw", lease=newer)  # raw now records token 2
    _consume(store, _events(2, range(10, 12)))
    with pytest.raises(LeaseLost, match="newer than this holder's"):
        compact_dataset(store, "raw", lease=stalled)
    assert duckdb.sql(f"select sum(gpu_microseconds)::BIGINT from read_parquet({store.files('usage_hourly')!r})").fetchall()[0][0] == 5 * 60_000_000


def test_verify_names_a_raw_file_the_close_read_that_is_gone(tmp_path: Path) -> None:
    store = Store(tmp_path)
    _consume(store, _events(2, range(10)), _events(3, range(10)))
    roll_up(store)
    close_month(store, REGISTRY, "2026-11")
    (gone, *_) = [f["path"] for f in read_manifest(store, "2026-11")["reads"]["raw"]["files"]]
    (tmp_path / gone).unlink()
    report = verify(store, every_file=True)
    assert [(str(d.kind), d.path) for d in report.differences] == [("file_missing", gone)]
