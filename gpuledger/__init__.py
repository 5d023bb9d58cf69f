"""gpuledger: the thin shell (CLI, settings, wiring) over collectors, streams, storage, accounting."""

__version__ = "0.1.0"
