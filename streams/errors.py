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


class StoredOffsetBeyondLog(StreamError):
    """Storage holds a partition up to an offset the bus's log does not reach (the topic was
    re-created, its offsets restarted): the records there now are not the ones stored.

    The partition stops; an operator re-bases it deliberately (``gpuledger offsets rebase``),
    which is recorded in the table's history. Never skipped as "already stored"."""


class StoredOffsetBeforeLog(StreamError):
    """Storage's next offset of a partition lies before the first record the bus still holds
    (retention or a trim dropped records that were never stored): named, never skipped."""
