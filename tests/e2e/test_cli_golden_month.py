"""The spine's golden month: hand-written events → ingest → consume → close, through the CLI,
read back with DuckDB (an independent reader), figures worked out by hand below."""

from __future__ import annotations

import json
import sys
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from spine_events import event  # noqa: E402

pytestmark = pytest.mark.e2e


def minutes(start_hour: str, count: int, **fields) -> list[dict]:
    """``count`` consecutive 60-s events from ``start_hour`` (``2026-10-05T03``)."""
    out = []
    for m in range(count):
        h, mm = divmod(m, 60)
        hour = int(start_hour[-2:]) + h
        out.append(event(f"{start_hour[:-2]}{hour:02d}:{mm:02d}:00Z", **fields))
    return out


def write_jsonl(path: Path, events: list[dict], extra_lines: list[str] = ()) -> Path:
    path.write_text("\n".join([json.dumps(e) for e in events] + list(extra_lines)) + "\n")
    return path


def test_golden_month_through_the_cli(tmp_path: Path, cli) -> None:
    # ---- given ----------------------------------------------------------------------------
    # gov / snu-llm (university: B200 list 3,900 − 50 % = 1,950 KRW/h): 90 whole minutes
    #   = 1.5 GPU-h → 1.5 × 1,950 = 2,925 KRW.
    snu = minutes("2026-10-05T03", 90, node="g1", gpu="GPU-G1", busy_gpu_seconds=30.0)
    # samsung / samsung-foundry-ai on one 1g MIG slice (1/7) of an H100 (3,100.50 KRW/h):
    #   7 minutes × 60/7 s; 60/7 s is 8,571,429 µs after rounding once → 60,000,003 µs
    #   → 60,000,003 × 3,100.50 / 3.6e9 = 51.675… → truncated 51 KRW.
    mig = minutes("2026-10-06T10", 7, node="s1", gpu="GPU-S1", device="MIG-S1-0", mig_profile="1g.10gb",
                  gpu_fraction=1 / 7, gpu_seconds=60 / 7, busy_gpu_seconds=0.0, entity="samsung",
                  project="samsung-foundry-ai", gpu_model="NVIDIA H100 80GB HBM3")
    # skt / skt-ax (B200 4,400 KRW/h) either side of 15:00 UTC on 31 October: the 14:59 minute
    #   is October in Korea (60 s → 4,400/60 = 73.33 → 73 KRW); the 15:00 minute is November.
    skt = [event("2026-10-31T14:59:00Z", node="k1", gpu="GPU-K1", entity="skt", project="skt-ax"),
           event("2026-10-31T15:00:00Z", node="k1", gpu="GPU-K1", entity="skt", project="skt-ax")]
    # gov, no job found: 60 minutes unattributed → compliance only, never billed.
    idle = minutes("2026-10-07T00", 60, node="g2", gpu="GPU-G2", project="unattributed", job_id=None,
                   busy_gpu_seconds=0.0)
    # refused: an unregistered project (30 minutes = 0.5 GPU-h quarantined for gov), a line
    #   that is not JSON, and a timestamp without a timezone.
    unknown = minutes("2026-10-08T00", 30, node="g3", gpu="GPU-G3", project="moonshot")
    naive = event("2026-10-09T00:00:00Z", node="g4", gpu="GPU-G4")
    naive["interval_start"], naive["interval_end"] = "2026-10-09T00:00:00", "2026-10-09T00:01:00"
    first = write_jsonl(tmp_path / "october.jsonl", snu + mig + skt + idle + unknown + [naive], ["{broken"])
    # the first 10 snu-llm minutes are delivered a second time in another file
    again = write_jsonl(tmp_path / "resent.jsonl", snu[:10])
    data = tmp_path / "data"
    common = ["--data-dir", str(data), "--registry", "examples/registry.toml"]

    # ---- when -----------------------------------------------------------------------------
    ingest = cli("ingest", str(first), *common)
    consume = cli("consume", "--until-idle", *common)
    cli("ingest", str(again), *common)
    consume_again = cli("consume", "--until-idle", *common)
    close = cli("close", "--month", "2026-10", *common)

    # ---- then -----------------------------------------------------------------------------
    total = len(snu) + len(mig) + len(skt) + len(idle) + len(unknown) + 2
    assert f"{total:,} lines published" in ingest.stdout
    assert "32 will be refused" in ingest.stdout  # 30 moonshot + naive + broken
    accepted = len(snu) + len(mig) + len(skt) + len(idle)
    assert f"{accepted:,} events accepted, 32 refused" in consume.stdout
    assert "0 events accepted" in consume_again.stdout and "10 duplicates dropped" in consume_again.stdout
    assert "2026-10" in close.stdout

    db = duckdb.connect()
    billing = db.execute(
        f"select entity, project, gpu_model, charge_class, gpu_microseconds, gpu_hours, "
        f"rate_krw_per_gpu_hour, amount_krw from read_parquet('{data}/ledgers/billing/**/*.parquet') "
        f"order by entity, project"
    ).fetchall()
    assert billing == [
        ("gov", "snu-llm", "NVIDIA B200", "usage", 5_400_000_000, Decimal("1.500000"), Decimal("1950.00"), Decimal("2925")),
        ("samsung", "samsung-foundry-ai", "NVIDIA H100 80GB HBM3", "usage", 60_000_003, Decimal("0.016667"),
         Decimal("3100.50"), Decimal("51")),
        ("skt", "skt-ax", "NVIDIA B200", "usage", 60_000_000, Decimal("0.016667"), Decimal("4400.00"), Decimal("73")),
    ]
    gov_b200 = db.execute(
        f"select reported_gpu_hours, attributed_gpu_hours, unattributed_gpu_hours, busy_gpu_hours, "
        f"idle_gpu_hours, quarantined_gpu_hours, breaches "
        f"from read_parquet('{data}/ledgers/compliance/**/*.parquet') "
        f"where entity = 'gov' and gpu_model = 'NVIDIA B200'"
    ).fetchone()
    reported, attributed, unattributed, busy, idle_h, quarantined, breaches = gov_b200
    assert (reported, attributed, unattributed) == (Decimal("2.5"), Decimal("1.5"), Decimal("1.0"))
    assert busy == Decimal("0.75")  # 90 minutes × 30 s busy
    assert idle_h == Decimal("1.75")
    assert quarantined == Decimal("0.5")
    assert "unregistered_project" in " ".join(breaches) or "unregistered" in " ".join(breaches)
    # nothing of November leaked into October; the November minute is waiting in raw/
    nov = db.execute(f"select count(*) from read_parquet('{data}/raw/**/*.parquet', hive_partitioning=true) "
                 f"where period = '2026-11'").fetchone()[0]
    assert nov == 1
    # the refused lines are kept with their reasons
    reasons = dict(db.execute(
        f"select reason_code, count(*) from read_parquet('{data}/quarantine/**/*.parquet', hive_partitioning=true) group by all"
    ).fetchall())
    assert reasons == {"unknown_project": 30, "not_json": 1, "no_timezone": 1}


def test_closing_again_gives_the_same_bytes(tmp_path: Path, cli) -> None:
    events = minutes("2026-10-05T03", 30, node="g1", gpu="GPU-G1")
    path = write_jsonl(tmp_path / "e.jsonl", events)
    runs = []
    for name in ("a", "b"):
        data = tmp_path / name
        common = ["--data-dir", str(data), "--registry", "examples/registry.toml"]
        cli("ingest", str(path), *common)
        cli("consume", "--until-idle", *common)
        cli("close", "--month", "2026-10", *common)
        runs.append((data / "ledgers/billing/period=2026-10/billing.parquet").read_bytes())
        again = cli("close", "--month", "2026-10", *common)
        assert "closed already" in (again.stdout + again.stderr)
        assert (data / "ledgers/billing/period=2026-10/billing.parquet").read_bytes() == runs[-1]
    assert runs[0] == runs[1]
