"""One store, one owner, decided by a Delta commit (issue 18): two consumers of different
groups that both find an empty store (no owner yet) cannot both win, on local disk here and on
S3 in ``tests/integration/test_s3_owner_race.py``. The race is staged where it bites: the
second consumer has read "no owner" and is about to record itself when the first's claim lands.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from storage.dataset import Store
from storage.owner import OWNER_FILE, StoreOwnedElsewhere, claim, read_owner

pytestmark = pytest.mark.unit
TOPIC = "gpu.usage.v1"


def race_two_first_claims(store: Store, reopen) -> tuple[object, object]:  # noqa: ANN001
    """B reads the empty store; A claims it fully; then B records itself. (A's claim, B's outcome.)"""
    won: dict[str, object] = {}

    def a_claims_first() -> None:
        won["a"] = claim(reopen(), "billing-a", TOPIC)

    try:
        outcome = claim(store, "billing-b", TOPIC, _before_commit=a_claims_first)
    except StoreOwnedElsewhere as exc:
        outcome = exc
    return won["a"], outcome


def test_two_first_starters_of_different_groups_on_an_empty_store_exactly_one_owns_it(tmp_path: Path) -> None:
    store = Store(tmp_path)
    a, b = race_two_first_claims(store, lambda: Store(tmp_path))
    assert a.groups == ("billing-a",)  # type: ignore[attr-defined]
    assert isinstance(b, StoreOwnedElsewhere), b
    text = str(b)
    assert "\n" not in text and "is written by consumer group 'billing-a'" in text and "group 'billing-b'" in text
    assert read_owner(store).groups == ("billing-a",)  # type: ignore[union-attr]
    # and from now on, whoever starts: the record says billing-a
    assert claim(Store(tmp_path), "billing-a", TOPIC).groups == ("billing-a",)
    with pytest.raises(StoreOwnedElsewhere):
        claim(Store(tmp_path), "billing-b", TOPIC)


def test_a_claim_whose_readable_copy_was_lost_is_rebuilt_from_the_claim_commit(tmp_path: Path) -> None:
    claim(Store(tmp_path), "billing-a", TOPIC)
    (tmp_path / OWNER_FILE).unlink()
    with pytest.raises(StoreOwnedElsewhere):  # not a fresh store: the first claim still decides
        claim(Store(tmp_path), "billing-b", TOPIC)
    assert read_owner(Store(tmp_path)).groups == ("billing-a",)  # type: ignore[union-attr]
