"""The monthly close of a KST calendar month: billing ledger, compliance ledger, seal.

::

    close_month(store, registry, "2026-11")
      usage_hourly/period=2026-11 ──► hourly by owner ──► billing (usage lines)
      usage_hourly/period<2026-11 ──► re-priced − billed so far ──► billing (correction lines)
      quarantine/period=2026-11 (not replayed into raw/) ──► compliance (quarantined, breaches)
      ──► ledgers/compliance/period=2026-11/compliance.parquet
      ──► ledgers/registry/period=2026-11/registry.toml       (the canonical registry priced with)
      ──► ledgers/billing/period=2026-11/billing.parquet      (its existence = "closed")
      ──► storage.seal.seal_period(...)                        (manifests/2026-11.json: files,
          totals, registry_sha256, and the Delta versions of raw/usage_hourly/quarantine read)

Invariants:

* a closed period's files are never rewritten: closing it again is a no-op that says so
  (:attr:`CloseResult.already_closed`), and re-sealing only happens if the seal is missing;
* the same inputs give byte-identical files (rows sorted, schemas declared, no wall clock);
* billing ledgers are the record of what was billed: the next close reads them to turn late
  usage into ``correction`` lines, so nothing is billed twice and nothing is lost;
* a month older than the newest closed month cannot be closed (the manifest chain is in
  month order); its usage is billed as corrections by the next close instead;
* it fails closed: an unreadable or altered manifest stops it before anything is read
  (:class:`storage.seal.SealUnreadable`, one line naming the file);
* under the store's lease (:mod:`storage.lease`, taken by the CLI and the scheduler) it checks
  and renews the lease at every step and immediately before each ledger, registry copy and
  manifest write, so no upkeep moves a file while it seals, and a close whose lease was taken
  over writes nothing more; those files are created if absent
  (:func:`storage.seal.write_sealable`), so even a close that stalled between its check and
  its write never replaces what another close sealed.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from accounting.billing import BillingLine, billed_so_far, billing_lines, gpu_hours, price_usage
from accounting.compliance import ComplianceRow, compliance_rows
from accounting.losses import loss_files, month_losses, with_losses
from accounting.errors import CloseError
from accounting.registry import NATIONAL, Registry
from accounting.schemas import BILLING, COMPLIANCE
from accounting.sealed import registry_sha256, write_registry_copy
from accounting.usage import (
    Month,
    kst_period_of,
    parse_month,
    quarantined,
    scan_earlier,
    scan_month,
    usage_periods,
    with_kst_calendar,
)
from storage import manifest
from storage.dataset import PARQUET_COMPRESSION, Store
from storage.deltalog import recorded_sha256
from storage.lease import Lease
from storage.rollup import ROLLUP_APP
from storage.seal import Fence, write_sealable

Progress = Callable[[str], None]
BILLING_DIR = "ledgers/billing"
PRICED_DIR = "ledgers/_closed"  # per close: fingerprints of the usage it priced (a cache)
COMPLIANCE_DIR = "ledgers/compliance"
_PERIOD_DIR = re.compile(r"period=(\d{4}-\d{2})$")


@dataclass(frozen=True, slots=True)
class EntityTotals:
    """One entity's figures for the close's summary (``ALL`` is the national total)."""

    entity: str
    allocated_gpus: int
    capacity_gpu_hours: Decimal
    reported_gpu_hours: Decimal
    idle_gpu_hours: Decimal
    unreported_gpu_hours: Decimal
    billed_gpu_hours: Decimal  # usage + corrections billed by this close
    amount_krw: Decimal  # usage + corrections billed by this close


@dataclass(frozen=True, slots=True)
class CloseResult:
    period: str
    files: tuple[str, ...]
    totals: dict[str, EntityTotals] = field(default_factory=dict)
    already_closed: bool = False
    billing_lines: int = 0
    correction_lines: int = 0
    manifest_sha256: str | None = None
    sealed: bool = False
    restated_periods: tuple[str, ...] = ()  # earlier periods re-priced (their usage had changed)

    @property
    def message(self) -> str:
        if self.already_closed:
            return (
                f"{self.period} was closed already; its ledgers are unchanged "
                "(late usage is billed as corrections by the next close)"
            )
        return f"closed {self.period}: {self.billing_lines} billing lines ({self.correction_lines} corrections)"


def billing_path(store: Store, period: str) -> str:
    return store.path(BILLING_DIR, f"period={period}", "billing.parquet")


def compliance_path(store: Store, period: str) -> str:
    return store.path(COMPLIANCE_DIR, f"period={period}", "compliance.parquet")


def closed_periods(store: Store) -> list[str]:
    """Periods whose billing ledger exists (written last by a close: the closed marker)."""
    found = []
    for path in store.files(BILLING_DIR):
        match = _PERIOD_DIR.search(posixpath.dirname(path))
        if match and posixpath.basename(path) == "billing.parquet":
            found.append(match[1])
    return sorted(found)


def due_months(store: Store, now: datetime) -> list[str]:
    """Months that ended before ``now`` (KST), have usage, and are not closed; oldest first.

    Usage means events consumed into ``raw`` (what the consumer writes), or rows already in
    ``usage_hourly``: a month consumed but never rolled up is due too (the close rolls it up).
    Months older than the newest closed month are not due: they can no longer be closed and
    their usage is billed as corrections by the next close.
    """
    current = kst_period_of(now)
    closed = closed_periods(store)
    newest = closed[-1] if closed else ""
    have = set(usage_periods(store)) | set(consumed_periods(store))
    return [p for p in sorted(have) if p < current and p not in closed and p > newest]


def consumed_periods(store: Store) -> list[str]:
    """Periods that hold any committed ``raw`` file (from the log's paths), sorted."""
    found = set()
    for path in store.files("raw"):
        match = _PERIOD_DIR.search(posixpath.dirname(posixpath.dirname(path)))
        if match:
            found.add(match[1])
    return sorted(found)


def close_month(
    store: Store,
    registry: Registry,
    period: str,
    *,
    signing_key: Path | None = None,
    progress: Progress | None = None,
    lease: Lease | None = None,
) -> CloseResult:
    """Close ``period`` (``YYYY-MM``, KST): write both ledgers and seal them.

    Raises :class:`CloseError` for a bad month, a month older than one already closed, or
    usage that has no rate card (listing every gap). The close reads one snapshot of the
    input tables from start to end, so it bills exactly the files it seals while a consumer
    or a roll-up keeps committing.
    """
    manifest.sealed_files(store)  # fail closed: every existing seal must read and verify
    say = progress or (lambda _msg: None)
    fence = lease.check if lease is not None else None
    if lease is not None:
        def say(msg: str, _inner: Progress = say) -> None:  # noqa: ANN202 - renew at every step
            lease.check()
            _inner(msg)
    with store.snapshot("usage_hourly", "quarantine", "raw"):
        return _close_month(store, registry, period, signing_key=signing_key, progress=say, fence=fence)


def _close_month(
    store: Store,
    registry: Registry,
    period: str,
    *,
    signing_key: Path | None,
    progress: Progress | None,
    fence: Fence | None = None,
) -> CloseResult:
    say = progress or (lambda _msg: None)
    month = parse_month(period)
    closed = closed_periods(store)
    if period in closed:
        return _already_closed(store, registry, period, signing_key, say, fence)
    if closed and period < closed[-1]:
        raise CloseError(
            f"cannot close {period}: {closed[-1]} is closed already (months close in order); "
            f"usage of {period} is billed as corrections by the next close"
        )

    lines, rows, inputs, earlier = _compute(store, registry, month, closed, say)

    say("writing ledgers")
    comp_file = compliance_path(store, period)
    bill_file = billing_path(store, period)
    # fenced (the lease checked immediately before each write) and created, never replaced,
    # once another close wrote them: the billing ledger (the closed marker) and the manifest
    # are created once; a compliance ledger left by a close that stopped is replaced
    write_sealable(store, period, comp_file, _parquet(_table([r.as_row() for r in rows], COMPLIANCE)), fence=fence)
    write_sealable(store, period, bill_file, _parquet(_table([ln.as_row() for ln in lines], BILLING)),
                   fence=fence, once=True)

    _write_priced_record(store, period, inputs)

    totals = _totals(lines, rows)
    files = (bill_file, comp_file)
    digest, sealed = _seal(store, registry, period, files, totals, signing_key, say, fence)
    corrections = sum(1 for ln in lines if ln.corrects_period is not None)
    return CloseResult(period, files, totals, False, len(lines), corrections, digest, sealed, tuple(earlier))


def read_close(store: Store, period: str) -> CloseResult:
    """The result of an earlier close, rebuilt from its ledgers (for summaries and re-sealing)."""
    bill_file, comp_file = billing_path(store, period), compliance_path(store, period)
    if not store.exists(bill_file):
        raise CloseError(f"{period} is not closed")
    bill = store.read_table(bill_file).to_pylist()
    comp = store.read_table(comp_file).to_pylist() if store.exists(comp_file) else []
    totals = _totals_from_rows(bill, comp)
    corrections = sum(1 for r in bill if r["corrects_period"] is not None)
    return CloseResult(period, (bill_file, comp_file), totals, True, len(bill), corrections)


# -- helpers --------------------------------------------------------------------------------
def _compute(
    store: Store, registry: Registry, month: Month, closed: list[str], say: Progress
) -> tuple[list[BillingLine], list[ComplianceRow], dict[str, str], list[str]]:
    """The ledgers a close of ``month`` computes, given the periods ``closed`` before it."""
    period = month.period
    # Fingerprint the inputs *before* reading them: a file that lands during the close is then
    # read but not fingerprinted, so the next close re-reads its period (never the reverse).
    usage_files = store.files("usage_hourly")
    inputs = {p: _inputs_fingerprint(store, usage_files, p) for p in usage_periods(store, usage_files) if p <= period}
    say(f"reading usage of {period}")
    hourly, oversubscribed = scan_month(store, period)
    unchanged, keys = _unchanged_since_last_close(store, registry, closed, inputs)
    earlier = [p for p in inputs if p < period and p not in unchanged]
    say(f"re-reading {len(earlier)} earlier period(s) whose usage changed since the last close")
    earlier_hourly = scan_earlier(store, earlier)
    say("reading quarantine")
    quarantine = quarantined(store, period)

    say("pricing")
    month_hourly = with_kst_calendar(hourly)
    all_hourly = with_kst_calendar(pl.concat([earlier_hourly, hourly]))
    daily = all_hourly.group_by(["period", "date", "entity", "project", "gpu_model"]).agg(
        pl.col("gpu_microseconds").sum()
    ).sort(["period", "date", "entity", "project", "gpu_model"])
    priced = price_usage(daily, registry)
    for (p,), frame in daily.select("period", "entity", "project", "gpu_model").unique().group_by("period"):
        keys[p] = sorted([e, proj, m] for e, proj, m in frame.select("entity", "project", "gpu_model").iter_rows())
    record = {
        "inputs": inputs,
        "keys": {p: keys.get(p, []) for p in inputs},
        "prices": {p: _prices_fingerprint(registry, p, keys.get(p, [])) for p in inputs},
    }
    # what was billed for the changed periods: only ledgers closed since the oldest of them
    # can hold lines about them (a period is billed by its own close and later corrections)
    since = [p for p in closed if earlier and p >= min(earlier)]
    billed = {
        key: value
        for key, value in billed_so_far(_earlier_billing_rows(store, since)).items()
        if key.usage_period not in unchanged
    }
    lines = billing_lines(period, priced, billed, registry.rounding)
    rows = compliance_rows(month, registry, month_hourly, oversubscribed, quarantine)
    rows = with_losses(rows, month_losses(store, period))  # recorded losses: data_lost (accounting/losses.py)

    return lines, rows, record, earlier


def _already_closed(
    store: Store, registry: Registry, period: str, signing_key: Path | None, say: Progress, fence: Fence | None
) -> CloseResult:
    say(f"{period} is closed already: nothing rewritten")
    result = read_close(store, period)
    digest, sealed = None, False
    if not store.exists(manifest.manifest_path(store, period)):
        # A close that stopped between its ledgers and its seal: finish the seal, but only of
        # ledgers this close computes too (a deleted manifest must not let an edit be sealed).
        _check_unsealed_ledgers(store, registry, period, say)
        digest, sealed = _seal(store, registry, period, result.files, result.totals, signing_key, say, fence)
    return CloseResult(
        period, result.files, result.totals, True, result.billing_lines, result.correction_lines, digest, sealed
    )


def _check_unsealed_ledgers(store: Store, registry: Registry, period: str, say: Progress) -> None:
    """Raise :class:`CloseError` unless the unsealed ledgers of ``period`` are what a close of
    it computes from the data there is now (so a close never seals a ledger it did not compute)."""
    say(f"{period} has ledgers but no seal: recomputing them before sealing")
    before = [p for p in closed_periods(store) if p < period]
    lines, rows, _, _ = _compute(store, registry, parse_month(period), before, say)
    expected = {
        billing_path(store, period): _table([ln.as_row() for ln in lines], BILLING),
        compliance_path(store, period): _table([r.as_row() for r in rows], COMPLIANCE),
    }
    for path, table in expected.items():
        try:
            found = store.read_table(path) if store.exists(path) else None
        except Exception as exc:  # noqa: BLE001 - an unreadable ledger is a differing one
            raise CloseError(f"cannot seal {period}: {path} is unreadable ({exc})") from exc
        if found is None or not found.cast(table.schema).equals(table):
            raise CloseError(
                f"cannot seal {period}: {path} differs from what a close computes from the data now, and "
                f"manifests/{period}.json is missing; restore the manifest from a backup (then run verify), "
                "or, if this close never finished and nothing was sent, delete the period's ledgers and close again"
            )


def _inputs_fingerprint(store: Store, usage_files: list[str], period: str) -> str:
    """SHA-256 over the names of the ``usage_hourly`` files of ``period``.

    Names are enough: the consumer names a file after its batch, whose id derives from the
    batch's content, so new data always comes in a new file and a replayed batch rewrites
    the same bytes under the same name; compaction writes new names (and so forces a re-read).
    """
    marker = f"/period={period}/"
    names = sorted(posixpath.relpath(path, store.root) for path in usage_files if marker in path)
    return hashlib.sha256("\n".join(names).encode()).hexdigest()


def _prices_fingerprint(registry: Registry, period: str, keys: list[list[str]]) -> str:
    """What the price of ``period``'s usage depends on, and nothing else: for each entity ×
    project × GPU model it used, the project's class and the rate cards (rate, days, that
    class's discount) of the entity × model within the month, and the rounding rule.

    Adding a project, or a rate card for a pool or model the period never used, leaves it
    unchanged, so the next close does not re-read the period (issue 15: restatement only where
    a price can change)."""
    month = parse_month(period)
    first, last = month.first_day, month.last_day
    parts: list[object] = [registry.rounding.value]
    for entity, project, model in keys:
        klass = registry.project_class(project)
        cards = [
            (str(card.krw_per_gpu_hour), lo.isoformat(), hi.isoformat(), str(card.discounts.get(klass, 0)))
            for card, lo, hi in registry.rate_segments(entity, model, first, last)
        ]
        parts.append((entity, project, model, klass, cards))
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def _priced_record_path(store: Store, period: str) -> str:
    return store.path(PRICED_DIR, f"{period}.json")


def _write_priced_record(store: Store, period: str, record: dict[str, dict]) -> None:
    """Record what this close priced, so the next one re-reads only periods that changed.

    A cache, not a record of truth: without it (deleted, or a close that stopped before
    writing it) the next close re-reads every earlier period, which gives the same lines.
    """
    doc = {"period": period, "format": 2, **record}
    store.write_bytes_atomic(_priced_record_path(store, period), json.dumps(doc, sort_keys=True, indent=1).encode())


def _unchanged_since_last_close(
    store: Store, registry: Registry, closed: list[str], inputs: dict[str, str]
) -> tuple[set[str], dict[str, list[list[str]]]]:
    """Earlier periods whose usage files and prices are as the last close priced them, and the
    entity × project × model keys each period priced (carried over for those not re-read).

    After any close, every period's billed total equals its priced total at that time; if
    neither its files nor the prices of what it used changed since, it needs no correction.
    """
    if not closed:
        return set(), {}
    path = _priced_record_path(store, closed[-1])
    if not store.exists(path):
        return set(), {}
    try:
        doc = json.loads(store.read_bytes(path))
    except ValueError:
        return set(), {}
    if doc.get("format") != 2:
        return set(), {}  # an older record (one fingerprint for the whole registry): re-read all
    seen, keys, prices = doc.get("inputs", {}), doc.get("keys", {}), doc.get("prices", {})
    unchanged = {
        p for p, fingerprint in inputs.items()
        if p <= closed[-1] and seen.get(p) == fingerprint and p in keys
        and prices.get(p) == _prices_fingerprint(registry, p, keys[p])
    }
    return unchanged, {p: keys[p] for p in unchanged}


def _earlier_billing_rows(store: Store, closed: list[str]) -> list[dict]:
    rows: list[dict] = []
    for period in closed:
        rows.extend(store.read_table(billing_path(store, period)).to_pylist())
    return rows


def _parquet(table: pa.Table) -> bytes:
    """The bytes of one Parquet file (as :meth:`Store.write_parquet_atomic` writes them)."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression=PARQUET_COMPRESSION)
    return sink.getvalue().to_pybytes()


def _table(rows: list[dict[str, object]], schema: pa.Schema) -> pa.Table:
    if not rows:
        return schema.empty_table()
    return pa.Table.from_pylist(rows, schema=schema)


def _totals(lines: list[BillingLine], rows: list[ComplianceRow]) -> dict[str, EntityTotals]:
    bill = [ln.as_row() for ln in lines]
    comp = [r.as_row() for r in rows]
    return _totals_from_rows(bill, comp)


def _totals_from_rows(bill: list[dict], comp: list[dict]) -> dict[str, EntityTotals]:
    amounts: dict[str, Decimal] = {}
    micro: dict[str, int] = {}
    for row in bill:
        for entity in (row["entity"], NATIONAL):
            amounts[entity] = amounts.get(entity, Decimal(0)) + Decimal(row["amount_krw"])
            micro[entity] = micro.get(entity, 0) + int(row["gpu_microseconds"])
    figures: dict[str, dict[str, Decimal | int]] = {}
    for row in comp:
        acc = figures.setdefault(row["entity"], {"alloc": 0, "cap": Decimal(0), "rep": Decimal(0), "idle": Decimal(0), "unrep": Decimal(0)})
        acc["alloc"] += row["allocated_gpus"]
        acc["cap"] += row["capacity_gpu_hours"]
        acc["rep"] += row["reported_gpu_hours"]
        acc["idle"] += row["idle_gpu_hours"]
        acc["unrep"] += row["unreported_gpu_hours"]
    totals = {}
    for entity in sorted(set(amounts) | set(figures)):
        f = figures.get(entity, {"alloc": 0, "cap": Decimal(0), "rep": Decimal(0), "idle": Decimal(0), "unrep": Decimal(0)})
        totals[entity] = EntityTotals(
            entity=entity,
            allocated_gpus=int(f["alloc"]),
            capacity_gpu_hours=Decimal(f["cap"]),
            reported_gpu_hours=Decimal(f["rep"]),
            idle_gpu_hours=Decimal(f["idle"]),
            unreported_gpu_hours=Decimal(f["unrep"]),
            billed_gpu_hours=gpu_hours(micro.get(entity, 0)),
            amount_krw=amounts.get(entity, Decimal(0)),
        )
    return totals


def seal_totals(totals: dict[str, EntityTotals]) -> dict[str, str]:
    """The period's totals as the manifest records them (decimal strings)."""
    out: dict[str, str] = {}
    for entity, t in totals.items():
        out[f"amount_krw.{entity}"] = str(t.amount_krw)
        out[f"billed_gpu_hours.{entity}"] = str(t.billed_gpu_hours)
        out[f"reported_gpu_hours.{entity}"] = str(t.reported_gpu_hours)
        out[f"capacity_gpu_hours.{entity}"] = str(t.capacity_gpu_hours)
    return out


def _seal(
    store: Store,
    registry: Registry,
    period: str,
    files: tuple[str, ...],
    totals: dict[str, EntityTotals],
    signing_key: Path | None,
    say: Progress,
    fence: Fence | None = None,
) -> tuple[str | None, bool]:
    """Seal the period: its ledgers, its ``usage_hourly`` and ``quarantine`` files, the copy of
    the registry it was priced with; and the Delta versions it read, with the month's ``raw``
    files at that version (their SHA-256 as recorded at commit: the log, not a re-read)."""
    say("sealing")
    registry_file, registry_hash = write_registry_copy(store, period, registry, fence=fence)
    if registry_hash != registry_sha256(registry):
        raise CloseError(f"the registry copy {registry_file} did not read back as written")
    inputs = [f for ds in ("usage_hourly", "quarantine") for f in _period_inputs(store, ds, period)]
    inputs += loss_files(store, period)  # recorded losses are sealed with the month
    # the raw version usage_hourly was rolled up from (under the lease nothing rolls up meanwhile),
    # so the raw files listed re-derive the sealed usage_hourly exactly (docs/auditors.md)
    raw_version = store.table("usage_hourly").transaction_version(ROLLUP_APP)
    recorded = recorded_sha256(store, "raw")
    prefix = f"period={period}/"
    raw_files = [
        {"path": f"raw/{rel}", "sha256": recorded.get(rel)}
        for rel in (store.table("raw").files_at(raw_version) if raw_version is not None else [])
        if rel.startswith(prefix)
    ]
    reads = {
        "raw": {"version": -1 if raw_version is None else raw_version, "files": raw_files},
        "usage_hourly": {"version": store.pinned_version("usage_hourly")},
        "quarantine": {"version": store.pinned_version("quarantine")},
    }
    say("writing the seal")
    digest = manifest.seal_period(
        store, period, [*files, registry_file, *inputs], seal_totals(totals), signing_key,
        reads=reads, registry_sha256=registry_hash, fence=fence,
    )
    return digest, True


def _period_inputs(store: Store, dataset: str, period: str) -> list[str]:
    return store.files(f"{dataset}/period={period}")
