"""Every test belongs to exactly one tier (unit, integration, e2e): an unmarked test would be
silently left out of ``pytest -m unit`` runs, so it is an error here."""

from __future__ import annotations

import pytest

TIERS = {"unit", "integration", "e2e"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    unmarked = [item.nodeid for item in items if not TIERS & {m.name for m in item.iter_markers()}]
    if unmarked:
        raise pytest.UsageError("tests without a tier marker (unit/integration/e2e):\n  " + "\n  ".join(unmarked))
