"""Errors of the storage room, and the project's root exception.

``storage`` sits at the bottom of the import graph (every other room may import it, it
imports none of them), so the one root exception of the project lives here::

    GpuledgerError
    ├── StorageError            (storage: a write, a read or a layout problem)
    │   └── IntegrityError      (a sealed file or manifest does not match)
    ├── streams.errors.StreamError …
    ├── collectors.errors.CollectorError …
    └── accounting.errors.AccountingError …

The CLI catches ``GpuledgerError`` and prints its message as the one-line reason.
"""


class GpuledgerError(Exception):
    """Root of every error gpuledger raises on purpose."""


class StorageError(GpuledgerError):
    """A dataset could not be written, read or laid out as declared."""


class IntegrityError(StorageError):
    """A sealed file, manifest or hash chain does not match what was recorded."""
