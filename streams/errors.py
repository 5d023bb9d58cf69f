"""Errors of the streams room (schema, bus, consumer)."""

from storage.errors import GpuledgerError


class StreamError(GpuledgerError):
    """Base for errors in the bus and the consumer."""


class BusUnavailable(StreamError):
    """The bus (Kafka broker, local log directory) cannot be reached right now.

    Producers treat it as retryable: the collector spools and tries again later.
    """


class BusConfigError(StreamError):
    """The bus settings are wrong (bad bootstrap address, bad security settings)."""
