"""The collector's Prometheus metrics, on a registry passed in (never the global default).

Names carry their unit (STYLE.md 7). What an operator watches:

* ``gpuledger_collector_samples_total`` grows by the number of devices every sampling period;
* ``gpuledger_collector_nvml_errors_total{kind}`` (``gpu_lost``, ``nvml_error``) should stay flat;
* ``gpuledger_collector_publish_lag_seconds``: now minus the end of the newest interval handed
  to the publisher; it should stay near the sampling period (a growing value: the agent is
  stuck or cannot publish);
* ``gpuledger_collector_spool_bytes`` / ``_spool_messages``: the backlog waiting for the bus
  (0 in normal operation; growing while the bus is unreachable).
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from collectors.device import DeviceSample

ERROR_FLAGS = ("gpu_lost", "nvml_error")


class CollectorMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.registry = registry
        p = "gpuledger_collector_"
        self.samples = Counter(f"{p}samples", "Device samples taken.", registry=registry)
        self.nvml_errors = Counter(
            f"{p}nvml_errors", "Device samples flagged by an NVML failure.", ["kind"], registry=registry
        )
        for kind in ERROR_FLAGS:
            self.nvml_errors.labels(kind=kind)
        self.devices = Gauge(f"{p}devices", "Devices (GPUs and MIG instances) in the last sample.", registry=registry)
        self.sample_seconds = Histogram(
            f"{p}sample_duration_seconds",
            "Wall time of one sampling round over all devices.",
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10),
            registry=registry,
        )
        self.last_sample = Gauge(f"{p}last_sample_timestamp_seconds", "UNIX time of the last sample.", registry=registry)
        self.events = Counter(f"{p}events_published", "Usage events handed to the publisher.", registry=registry)
        self.publish_failures = Counter(
            f"{p}publish_failures", "Batches the publisher refused (kept in memory and retried).", registry=registry
        )
        self.events_dropped = Counter(
            f"{p}events_dropped", "Events dropped because the in-memory retry buffer was full.", registry=registry
        )
        self.publish_lag = Gauge(
            f"{p}publish_lag_seconds", "Now minus the end of the newest interval published.", registry=registry
        )
        self.spool_bytes = Gauge(f"{p}spool_bytes", "Bytes waiting in the local spool.", registry=registry)
        self.spool_messages = Gauge(f"{p}spool_messages", "Messages waiting in the local spool.", registry=registry)

    def observe_samples(self, samples: Sequence[DeviceSample], duration_s: float, timestamp_s: float) -> None:
        self.samples.inc(len(samples))
        self.devices.set(len(samples))
        self.sample_seconds.observe(duration_s)
        self.last_sample.set(timestamp_s)
        for sample in samples:
            for kind in ERROR_FLAGS:
                if kind in sample.flags:
                    self.nvml_errors.labels(kind=kind).inc()


def serve(registry: CollectorRegistry, port: int, addr: str = "0.0.0.0") -> tuple[object, int]:
    """Serve ``/metrics`` on a daemon thread; returns the server and its port (``port=0``:
    the OS picks one). Call ``server.shutdown()`` to stop it."""
    server, _thread = start_http_server(port, addr=addr, registry=registry)
    return server, server.server_port
