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


class BusCorrupt(StreamError):
    """The local bus's log or a group's saved position is damaged (not a torn tail).

    Never retried and never cut away: the message names the file, the record's offset and
    byte, and what to do. Records after the damage are not read until an operator acts.
    """


class ConsumerGroupBusy(StreamError):
    """Another consumer of the same group already reads this local bus (it would double count)."""
