"""Errors of the collectors room."""

from storage.errors import GpuledgerError


class CollectorError(GpuledgerError):
    """Base for collector errors."""


class NvmlUnavailable(CollectorError):
    """The NVML library or the NVIDIA driver is missing: ``collect`` cannot start."""


class SpoolFull(CollectorError):
    """The local spool reached its byte limit; the oldest data is not dropped, new data waits."""
