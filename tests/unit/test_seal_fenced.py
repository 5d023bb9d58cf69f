"""Sealing is fenced, not only checked (issue 15): a close that lost its lease writes nothing,
and no second close can replace a sealed month's manifest.

Two closes of one month on one store; the first stalls mid-close past its lease's expiry (an
injected clock), a second close takes the lease, sees one late event more and seals. The
first then wakes up. Whatever step it stalled at, there is exactly one manifest, ``verify``
reads every sealed file back unchanged, and the first close stops with one line.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from spine_events import event, jsonl

from accounting.close import close_month
from accounting.registry import load_registry
from gpuledger.cli_common import run_command
from gpuledger.wiring import accounts_of
from storage.dataset import Store
from storage.errors import IntegrityError
from storage.lease import Lease, LeaseLost, hold
from storage.manifest import manifest_path, read_manifest, seal_period, sealed_periods, verify
from storage.rollup import roll_up
from streams.pipeline import BatchProcessor

pytestmark = pytest.mark.unit

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "registry.toml"
REGISTRY = load_registry(EXAMPLES)
T0 = 1_800_000_000.0  # the injected clocks' "now" (seconds since the epoch)
TTL_S = 60


def _consume(store: Store, minutes: range, tag: str) -> None:
    events = [event(f"2026-11-02T03:{m:02d}:00Z", gpu="GPU-0001", project="snu-llm",
                    entity=REGISTRY.projects["snu-llm"].entity, energy_joules=1000.0 + m) for m in minutes]
    BatchProcessor(store, accounts_of(REGISTRY)).process([(tag, jsonl(*events))])


def _second_close(store: Store, *, late: bool) -> None:
    """Another close, later: the first's lease has expired by its clock (``late``: one late
    event landed meanwhile, so its ledgers differ from the first close's)."""
    store = reopen(store)  # another process: its own snapshots
    if late:
        _consume(store, range(40, 41), "late")
    with hold(store, "close B", ttl_s=TTL_S, clock=lambda: T0 + 10 * TTL_S) as lease:
        roll_up(store, lease=lease)
        close_month(store, REGISTRY, "2026-11", lease=lease)


def reopen(store: Store) -> Store:
    """The same store as another process opens it (local or S3)."""
    if store.location is None:
        return Store(store.root)
    from storage.location import root_of

    return Store(store.location.url, s3_options=root_of(store)[1])


def assert_lost_in_one_line(lost: pytest.ExceptionInfo, capsys: pytest.CaptureFixture[str]) -> None:
    """The loser's refusal, as a command prints it: exit 1, one line naming the lease and who lost it."""
    assert isinstance(lost.value, LeaseLost), str(lost.value)
    capsys.readouterr()

    def body() -> None:
        raise lost.value

    with pytest.raises(SystemExit) as exited:
        run_command(body)
    out = capsys.readouterr()
    shown = (out.out + out.err).strip()
    assert exited.value.code == 1 and "\n" not in shown, shown
    assert shown.startswith("error: close A lost the upkeep lease of ") and "lost the upkeep lease" in shown and "run it again" in shown


def _reported_hours(store: Store) -> float:
    doc = read_manifest(store, "2026-11")
    return float(doc["totals"]["reported_gpu_hours.gov"])


def stalled_first_close(store: Store, stall_at: str, *, late: bool) -> tuple[Store, pytest.ExceptionInfo]:
    """Close A stalls at the progress step ``stall_at`` past its lease's expiry while close B
    takes the lease and seals; returns A's refusal."""
    _consume(store, range(30), "first")
    first = Lease(store, "close A", ttl_s=TTL_S, clock=lambda: T0)
    first.acquire()
    roll_up(store, lease=first)
    stalled = []

    def progress(msg: str) -> None:
        if not stalled and msg == stall_at:  # A stalls here (a GC pause, a VM stall) past its expiry
            stalled.append(msg)
            _second_close(store, late=late)

    with pytest.raises((LeaseLost, IntegrityError)) as lost:
        close_month(store, REGISTRY, "2026-11", lease=first, progress=progress)
    assert stalled, "the first close never reached the step it should stall at"
    return store, lost


# stalled before its ledgers, a late event lands and the winner's ledgers differ; stalled after
# them, the winner seals the first's (unsealed, still what a close computes) ledgers
@pytest.mark.parametrize(("step", "late"), [("pricing", True), ("writing ledgers", True), ("sealing", False),
                                            ("writing the seal", False)])
def test_a_close_whose_lease_expired_mid_close_writes_nothing_and_the_winner_seal_verifies(
        tmp_path: Path, step: str, late: bool, capsys: pytest.CaptureFixture[str]) -> None:
    store, lost = stalled_first_close(Store(tmp_path), step, late=late)
    assert_lost_in_one_line(lost, capsys)
    assert sealed_periods(store) == ["2026-11"]
    report = verify(store, every_file=True)
    assert report.ok, [str(d) for d in report.differences]
    # the winner's seal covers what it read (the late event too): the loser's ledgers are nowhere
    assert _reported_hours(store) == pytest.approx((31 if late else 30) / 60)


def test_a_close_that_stalled_after_its_last_check_cannot_replace_a_sealed_ledger(tmp_path: Path) -> None:
    """The window a check leaves (checked, then stalled, then written): create-if-absent closes it."""
    store = Store(tmp_path)
    _consume(store, range(30), "first")
    first = Lease(store, "close A", ttl_s=TTL_S, clock=lambda: T0)
    first.acquire()
    roll_up(store, lease=first)
    real_check = first.check
    armed: list[str] = []

    def check_then_stall() -> None:
        real_check()
        if armed == ["writing ledgers"]:  # this is A's fence before its first ledger: it passed
            armed.append("stalled")
            _second_close(store, late=True)

    def progress(msg: str) -> None:
        if msg == "writing ledgers":
            armed.append(msg)

    first.check = check_then_stall  # type: ignore[method-assign]
    with pytest.raises(IntegrityError) as refused:
        close_month(store, REGISTRY, "2026-11", lease=first, progress=progress)
    assert armed == ["writing ledgers", "stalled"]
    message = str(refused.value)
    assert "\n" not in message and "compliance.parquet was written meanwhile by another close" in message
    assert sealed_periods(store) == ["2026-11"]
    report = verify(store, every_file=True)
    assert report.ok, [str(d) for d in report.differences]
    assert _reported_hours(store) == pytest.approx(31 / 60)


def test_a_second_seal_never_replaces_a_manifest_even_written_between_its_fence_and_its_write(tmp_path: Path) -> None:
    store = Store(tmp_path)
    ledger = tmp_path / "ledgers" / "billing" / "period=2026-11" / "billing.parquet"
    ledger.parent.mkdir(parents=True)
    ledger.write_bytes(b"PAR1 not really")

    def another_seals_meanwhile() -> None:  # the fence passed; then the winner sealed first
        seal_period(store, "2026-11", [str(ledger)], {"amount_krw.gov": "1"})

    with pytest.raises(IntegrityError, match="sealed already with different content"):
        seal_period(store, "2026-11", [str(ledger)], {"amount_krw.gov": "2"}, fence=another_seals_meanwhile)
    assert read_manifest(store, "2026-11")["totals"] == {"amount_krw.gov": "1"}
    assert Path(manifest_path(store, "2026-11")).exists()
    assert verify(store, every_file=True).ok
