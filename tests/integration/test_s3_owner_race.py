"""One store, one owner on S3 (issue 18): pyarrow has no conditional PUT, so the owner record's
create-if-absent alone let two first starters of different groups both "win" on an empty
bucket prefix. The first claim is a Delta commit (conditional put of the log entry): exactly
one wins, staged at the worst moment and raced for real."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest
from s3_server import S3Endpoint
from test_s3_storage import options

from storage.dataset import Store
from storage.owner import StoreOwnedElsewhere, claim, read_owner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from test_store_owner_race import TOPIC, race_two_first_claims  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.s3]


def test_two_first_starters_on_an_empty_s3_store_exactly_one_owns_it(s3: S3Endpoint, s3_prefix: str) -> None:
    url = s3.url(s3_prefix, "data")
    a, b = race_two_first_claims(Store(url, s3_options=options(s3)), lambda: Store(url, s3_options=options(s3)))
    assert a.groups == ("billing-a",)  # type: ignore[attr-defined]
    assert isinstance(b, StoreOwnedElsewhere), b
    assert read_owner(Store(url, s3_options=options(s3))).groups == ("billing-a",)  # type: ignore[union-attr]


def test_racing_first_starters_on_s3_never_both_win(s3: S3Endpoint, s3_prefix: str) -> None:
    for round_ in range(8):
        url = s3.url(s3_prefix, f"data-{round_}")
        start = threading.Barrier(2)
        outcome: dict[str, object] = {}

        def start_consumer(group: str, url: str = url, start: threading.Barrier = start,
                           outcome: dict[str, object] = outcome) -> None:
            store = Store(url, s3_options=options(s3))
            start.wait()
            try:
                outcome[group] = claim(store, group, TOPIC)
            except StoreOwnedElsewhere as exc:
                outcome[group] = exc

        threads = [threading.Thread(target=start_consumer, args=(g,)) for g in ("billing-a", "billing-b")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        winners = sorted(g for g, o in outcome.items() if not isinstance(o, Exception))
        assert len(outcome) == 2 and len(winners) == 1, (round_, outcome)
        assert read_owner(Store(url, s3_options=options(s3))).groups == tuple(winners)  # type: ignore[union-attr]
