"""One store, one owner: the consumer group (and topic) that writes a data directory.

Two consumers of *different* groups on one data dir (a copy-pasted unit, a renamed group) each
pass their own group's lock, keep their own dedupe window and both store every event: 60,000
raw rows for 30,000 ids, and a close that then refuses for good. Offsets in the Delta commits
are per group, so nothing else stops them. Hence ``<data-dir>/_owner.json``:

* the **first claim is a Delta commit** (issue 18): ``<data-dir>/_owner`` is a tiny Delta
  table (no data files, only its log, like :mod:`storage.lease`); the first consumer commits
  the application transaction ``gpuledger/owner`` = 1 with its record in the commit's
  ``commitInfo``. delta-rs writes the log entry with a conditional put (an exclusive create
  locally, ``If-None-Match`` on S3) and refuses a second commit of the same app id from the
  same snapshot, so of two consumers of different groups starting at once on an empty store,
  on local disk or S3, exactly one wins. Both then read the winning commit back and write
  ``_owner.json`` from it (the same bytes, whoever writes them): the file is the readable copy
  that ``add-group`` extends; the commit decides who was first. (A plain create-if-absent of
  the file cannot decide it on S3: pyarrow has no conditional PUT, so two creators racing
  within one round trip both "won".)
* every consumer, on either bus, calls :func:`claim` at start; a group or topic the record does
  not list is refused (:class:`StoreOwnedElsewhere`, one line naming the store, the recorded
  group and how to add one on purpose);
* ``gpuledger storage add-group NAME --reason TEXT`` adds a group on purpose (a hand-over
  to a renamed group: stop the old one first, two groups running at once still race); each
  change is kept in the record's ``history`` with who, when and why.
"""

from __future__ import annotations

import dataclasses
import getpass
import json
from collections.abc import Callable
from datetime import UTC, datetime

import pyarrow as pa

from storage.errors import StorageError
from storage.location import create_new, read_bytes, root_of, write_atomic

OWNER_FILE = "_owner.json"
OWNER_TABLE = "_owner"  # the first claim's Delta commit (who was first), see the module docstring
OWNER_APP = "gpuledger/owner"
OWNER_KEY = "gpuledger.owner"
FORMAT = 1
_CLAIM_SCHEMA = pa.schema([pa.field("group", pa.string())])  # the claim table holds no rows


class StoreOwnedElsewhere(StorageError):
    """Another consumer group (or topic) owns this store."""


@dataclasses.dataclass(frozen=True, slots=True)
class Owner:
    topic: str
    groups: tuple[str, ...]
    history: tuple[dict, ...]

    def to_json(self) -> bytes:
        doc = {"format": FORMAT, "topic": self.topic, "groups": list(self.groups), "history": list(self.history)}
        return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()


def read_owner(store) -> Owner | None:  # noqa: ANN001 - storage.dataset.Store
    """The store's owner record (``None`` while no consumer has claimed it)."""
    root, options = root_of(store)
    where = root.join(OWNER_FILE)
    try:
        doc = json.loads(read_bytes(where, options))
        return Owner(str(doc["topic"]), tuple(str(g) for g in doc["groups"]), tuple(doc.get("history", ())))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        raise StorageError(
            f"{where}: garbled owner record ({exc}); restore it from a backup, or rewrite it with the group and "
            "topic that write this store (docs/operators.md, \"One store, one owner\")"
        ) from exc


def claim(store, group: str, topic: str, *, now: datetime | None = None,  # noqa: ANN001
          _before_commit: Callable[[], None] | None = None) -> Owner:
    """Record ``group``/``topic`` as the store's owner if it has none; refuse any other.

    ``_before_commit`` (tests): runs after the claim's snapshot was read and before its commit,
    where a racing consumer's claim lands."""
    root, options = root_of(store)
    owner = read_owner(store)
    if owner is None:
        first = Owner(topic, (group,), (_entry("claimed by the first consumer", group, topic, None, now),))
        winner = _first_claim(store, first, _before_commit)
        create_new(root.join(OWNER_FILE), winner.to_json(), options)  # every claimer writes the same bytes
        owner = read_owner(store)
        assert owner is not None
    if owner.topic != topic or group not in owner.groups:
        recorded = ", ".join(repr(g) for g in owner.groups)
        raise StoreOwnedElsewhere(
            f"{root} is written by consumer group {recorded} of topic {owner.topic!r} (recorded in "
            f"{root.join(OWNER_FILE)}); this consumer is group {group!r} of topic {topic!r} and is refused: two groups "
            f"on one store store every event twice. Use group {owner.groups[0]!r} ([kafka] consumer_group, "
            f"GPULEDGER_KAFKA__CONSUMER_GROUP), or hand the store over on purpose: stop the other group, then run "
            f"`gpuledger storage add-group {group} --reason TEXT`"
        )
    return owner


def _first_claim(store, first: Owner, before_commit: Callable[[], None] | None) -> Owner:  # noqa: ANN001
    """The owner the ``_owner`` table's first claim commit records: ``first`` if this call's
    commit won, else the one that won (a Delta commit decides, local or S3)."""
    from storage.delta import CommitConflict, DeltaDataset

    options = store.location.delta_options() if store.location is not None else None
    table = DeltaDataset(store.uri(OWNER_TABLE), _CLAIM_SCHEMA, options)
    for _ in range(3):  # two first starters may race to create the empty table itself
        try:
            table.create_if_missing()
            break
        except StorageError:
            table = DeltaDataset(store.uri(OWNER_TABLE), _CLAIM_SCHEMA, options)
    snapshot = table.table()
    if snapshot is None:
        raise StorageError(f"cannot create {store.display_root.rstrip('/')}/{OWNER_TABLE}, the store's owner claim")
    if snapshot.transaction_version(OWNER_APP) is None:
        if before_commit is not None:
            before_commit()
        try:
            table.commit([], txns={OWNER_APP: 1}, metadata={OWNER_KEY: first.to_json().decode()})
        except CommitConflict:
            pass  # another consumer's claim came first: read it back below
    return _claimed(store)


def _claimed(store) -> Owner:  # noqa: ANN001
    """The owner the first claim commit of ``_owner`` records (the lowest version with one)."""
    from storage.deltalog import commit_actions

    version = 1
    while (actions := commit_actions(store, OWNER_TABLE, version)) is not None:
        for action in actions:
            doc = (action.get("commitInfo") or {}).get(OWNER_KEY)
            if doc:
                data = json.loads(doc)
                return Owner(str(data["topic"]), tuple(str(g) for g in data["groups"]), tuple(data["history"]))
        version += 1
    raise StorageError(
        f"{store.display_root.rstrip('/')}/{OWNER_TABLE} holds no owner claim after this consumer's claim; "
        "start the consumer again (docs/operators.md, \"One store, one owner\")"
    )


def add_group(store, group: str, reason: str, *, topic: str | None = None, who: str | None = None,  # noqa: ANN001
              now: datetime | None = None) -> Owner:
    """Add ``group`` to the store's owners on purpose (recorded with who, when and why)."""
    if not reason.strip():
        raise StorageError("adding a group needs a --reason (it is kept in the owner record)")
    owner = read_owner(store)
    root, options = root_of(store)
    if owner is None:
        if topic is None:
            raise StorageError(f"{root} has no owner yet: the first consumer that starts claims it")
        owner = Owner(topic, (), ())
    if group in owner.groups:
        return owner
    updated = Owner(owner.topic, (*owner.groups, group),
                    (*owner.history, _entry("group added on purpose", group, owner.topic, reason, now, who)))
    write_atomic(root.join(OWNER_FILE), updated.to_json(), options)
    return updated


def _entry(event: str, group: str, topic: str, reason: str | None, now: datetime | None, who: str | None = None) -> dict:
    at = (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    entry = {"at": at, "event": event, "group": group, "topic": topic, "by": who or _user()}
    if reason:
        entry["reason"] = reason
    return entry


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
