"""One lease for the close and all table upkeep (roll-up, compaction, vacuum), local or S3.

The lease is a tiny Delta table, ``<root>/_lease`` (no data files: only its log). Taking it is
one Delta commit, which delta-rs makes with a conditional put of the next log entry
(``If-None-Match``/etag on S3, an exclusive create on a local disk), so it works the same on
one machine or many, with no ``flock`` and no local directory beside an ``s3://`` root:

- the commit carries the application transaction ``gpuledger/lease`` = the **fencing token**
  (one more than the last), and in its ``commitInfo`` the holder, the token, the expiry and
  whether it releases. Two processes taking it at once write the same app id from the same
  snapshot: delta-rs refuses the second commit, so exactly one wins (:class:`LeaseHeld`);
- a holder that dies stops renewing; once ``expires_ms`` has passed the next taker wins, with
  a higher token;
- **fencing**: every upkeep commit to ``usage_hourly``, ``raw`` or ``quarantine`` carries
  ``gpuledger/lease`` = the holder's token. :meth:`Lease.fence` refuses when the table already
  records a higher token (a newer holder committed), and two commits of the app id from the
  same snapshot conflict in delta-rs: a holder whose lease expired and was taken over can
  never commit after the new holder did. The close's ledgers, registry copy and manifest are
  single objects, not Delta commits: each is written right after :meth:`Lease.check` (a
  renewal, itself a conditional commit that fails once another holder took over) and created
  if absent (:func:`storage.seal.write_sealable`, ``write_once``), so a close that lost its
  lease writes nothing, and one that stalled between its check and its write still cannot
  replace what the winner sealed (its create fails, it stops with one line).

Costs one commit to take and one to release (a log entry of ~1 KB); docs/architecture.md,
"Storage and exactly-once", states the design and docs/BENCHMARKS.md what it costs.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pyarrow as pa

from storage.dataset import Store
from storage.delta import CommitConflict, DeltaDataset
from storage.deltalog import commit_actions
from storage.errors import StorageError

LEASE_TABLE = "_lease"
LEASE_APP = "gpuledger/lease"
LEASE_KEY = "gpuledger.lease"
DEFAULT_TTL_S = 600
_SCHEMA = pa.schema([pa.field("holder", pa.string())])
Clock = Callable[[], float]  # seconds since the epoch


class LeaseHeld(StorageError):
    """Someone else holds the lease (or took it at the same moment): try again later."""


class LeaseLost(StorageError):
    """This holder's lease expired and another took it: stop, write nothing more."""


@dataclass(frozen=True, slots=True)
class LeaseState:
    holder: str | None
    token: int
    expires_ms: int
    released: bool

    def free_at(self, now_ms: int) -> bool:
        return self.holder is None or self.released or self.expires_ms <= now_ms


def holder_name(job: str) -> str:
    """``<job>@<host>:<pid>:<random>``: unique per taking, readable in an error."""
    return f"{job}@{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Lease:
    """The store's lease as seen by one would-be holder."""

    def __init__(self, store: Store, holder: str, *, ttl_s: float = DEFAULT_TTL_S, clock: Clock = time.time):
        self.store = store
        self.holder = holder
        self.ttl_s = ttl_s
        self._clock = clock
        options = store.location.delta_options() if store.location is not None else None
        self._table = DeltaDataset(store.uri(LEASE_TABLE), _SCHEMA, options)
        self.token: int | None = None

    # -- reading ------------------------------------------------------------------------------
    def state(self) -> LeaseState:
        """The lease as its newest commit says (free if never taken)."""
        # one snapshot, the one the next commit is checked against: its txn and its newest entry
        self._table.create_if_missing()
        snapshot = self._table.table()
        assert snapshot is not None
        token = snapshot.transaction_version(LEASE_APP) or 0
        for action in commit_actions(self.store, LEASE_TABLE, snapshot.version()) or []:
            raw = (action.get("commitInfo") or {}).get(LEASE_KEY)
            if raw:  # every commit but the table's creation carries the lease
                doc = json.loads(raw)
                return LeaseState(doc["holder"], int(doc["token"]), int(doc["expires_ms"]), bool(doc["released"]))
        return LeaseState(None, token, 0, True)

    # -- taking, renewing, releasing ----------------------------------------------------------
    def acquire(self, *, wait_s: float = 0.0, poll_s: float = 1.0) -> int:
        """Take the lease (waiting up to ``wait_s`` for it to be free); the fencing token.

        Raises :class:`LeaseHeld` naming the holder and until when, if it stays taken.
        """
        deadline = self._clock() + wait_s
        while True:
            state = self.state()
            now_ms = self._now_ms()
            if state.free_at(now_ms) or state.holder == self.holder:
                try:
                    self.token = self._commit(state.token + 1, released=False)
                    return self.token
                except CommitConflict:
                    state = self.state()
            if self._clock() >= deadline:
                raise LeaseHeld(_held_message(self.store, state))
            time.sleep(poll_s)

    def check(self) -> None:
        """Renew the lease if this holder still holds it; :class:`LeaseLost` if not."""
        if self.token is None:
            raise LeaseLost(f"{self.holder} does not hold the lease of {self.store.display_root}")
        state = self.state()
        if state.holder != self.holder or state.token != self.token or state.released:
            raise LeaseLost(_lost_message(self.store, self.holder, state))
        if state.expires_ms <= self._now_ms():
            raise LeaseLost(_lost_message(self.store, self.holder, state))
        try:
            self._commit(self.token, released=False)
        except CommitConflict as exc:
            raise LeaseLost(_lost_message(self.store, self.holder, self.state())) from exc

    def release(self) -> None:
        if self.token is None:
            return
        state = self.state()
        if state.holder == self.holder and state.token == self.token and not state.released:
            try:
                self._commit(self.token, released=True)
            except CommitConflict:
                pass  # taken over meanwhile: nothing of ours to release
        self.token = None

    def fence(self, dataset: str) -> dict[str, int]:
        """The ``txns`` an upkeep commit to ``dataset`` carries; :class:`LeaseLost` if a newer
        holder has committed to it. Read from the snapshot the commit is checked against."""
        if self.token is None:
            raise LeaseLost(f"{self.holder} does not hold the lease of {self.store.display_root}")
        seen = self.store.table(dataset).transaction_version(LEASE_APP)
        if seen is not None and seen > self.token:
            raise LeaseLost(
                f"{dataset} was written under lease token {seen}, newer than this holder's {self.token}: "
                f"{self.holder} lost the lease of {self.store.display_root}; nothing more is written"
            )
        return {LEASE_APP: self.token}

    # -- helpers --------------------------------------------------------------------------------
    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _commit(self, token: int, *, released: bool) -> int:
        doc = {"holder": self.holder, "token": token, "expires_ms": self._now_ms() + int(self.ttl_s * 1000),
               "released": released}
        self._table.commit([], txns={LEASE_APP: token}, metadata={LEASE_KEY: json.dumps(doc, sort_keys=True)})
        return token


@contextmanager
def hold(store: Store, job: str, *, wait_s: float = 0.0, ttl_s: float = DEFAULT_TTL_S,
         clock: Clock = time.time) -> Iterator[Lease]:
    """Hold the store's lease for a block (released at its end, even on error)."""
    lease = Lease(store, holder_name(job), ttl_s=ttl_s, clock=clock)
    lease.acquire(wait_s=wait_s)
    try:
        yield lease
    finally:
        lease.release()


def _held_message(store: Store, state: LeaseState) -> str:
    until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(state.expires_ms / 1000))
    return (
        f"the upkeep lease of {store.display_root} is held by {state.holder} (token {state.token}) "
        f"until {until} unless renewed: a close or upkeep is running; try again when it ends"
    )


def _lost_message(store: Store, holder: str, state: LeaseState) -> str:
    return (
        f"{holder} lost the upkeep lease of {store.display_root} (now {state.holder}, token {state.token}); "
        "it stopped before writing anything more: run it again"
    )
