"""Errors of the accounting room::

    GpuledgerError                  (storage.errors)
    └── AccountingError
        ├── RegistryError           the registry file is missing or wrong; lists every problem
        └── CloseError              a monthly close cannot be done (bad period, no rate, …)
"""

from __future__ import annotations

from collections.abc import Sequence

from storage.errors import GpuledgerError


class AccountingError(GpuledgerError):
    """Root of the accounting room's errors."""


class RegistryError(AccountingError):
    """The registry could not be loaded; ``problems`` holds every problem found, in file order."""

    def __init__(self, source: str, problems: Sequence[str]):
        self.source = source
        self.problems = tuple(problems)
        count = len(self.problems)
        listing = "; ".join(self.problems)
        super().__init__(f"{source}: {count} problem{'s' if count != 1 else ''}: {listing}")


class CloseError(AccountingError):
    """A monthly close cannot be done; the message says why (and lists every gap)."""
