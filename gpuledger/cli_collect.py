"""``gpuledger collect``: the agent that runs on every GPU node.

The command parses options, builds the settings, and calls :func:`run_collect`, which wires
the parts (NVML reader, attribution, integrator, spooling publisher, metrics endpoint) and
runs :class:`collectors.agent.CollectorAgent` until SIGTERM/SIGINT or the bound given.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
import typer.main
from prometheus_client import CollectorRegistry

from accounting.registry import load_registry

from collectors.agent import CollectorAgent, JsonLogFormatter, RunStats
from collectors.checkpoint import FileCheckpoint
from collectors.attribution import ProcAttributor
from collectors.integrate import IntervalIntegrator
from collectors.metrics import CollectorMetrics, serve
from collectors.nvml import NvmlReader
from collectors.spool import SpoolingPublisher
from gpuledger.cli_common import BusOpt, DataDirOpt, RegistryOpt, out, quiet_flags, run_command, settings_from
from gpuledger.settings import Settings, StaticOwner
from streams.bus import Bus

log = logging.getLogger("gpuledger.collector")


@dataclasses.dataclass(frozen=True, slots=True)
class CollectOptions:
    simulate: bool = False
    once: bool = False
    duration_s: float | None = None
    metrics: bool = True


@contextlib.contextmanager
def _nvml(simulate: bool, node: str) -> Iterator[None]:
    """Real NVML, or the fake library over a normal 8-GPU node whose counters follow the clock."""
    if not simulate:
        yield
        return
    from collectors.fakenvml import installed, scenarios

    scenario = scenarios.normal_node(node)
    scenario.clock = time.time
    with installed(scenario):
        yield


def _static_owner(settings: Settings, project_entity: dict[str, str], simulate: bool) -> StaticOwner | None:
    """The configured owner of job-less GPUs; a simulated node without one puts them in the
    first registry entity as ``unattributed`` (counted, never billed): no job, no invoice."""
    owner = settings.collector.static_owner
    if owner is None and simulate and project_entity:
        entity = sorted(set(project_entity.values()))[0]
        owner = StaticOwner(entity=entity, project="unattributed")
        log.info("simulate: usage without a job is unattributed (never billed)",
                 extra={"entity": owner.entity, "project": owner.project})
    return owner


def _bus(settings: Settings) -> Bus:
    """The configured bus, importing only what it needs.

    Same choice as ``gpuledger.wiring.make_bus``, repeated here because the wiring module
    pulls in the consumer side (Polars, pyarrow: ~60 MiB) that a node agent never uses.
    """
    if settings.bus == "kafka":
        from streams.kafka import KafkaBus

        return KafkaBus(settings.kafka)
    from streams.localbus import LocalBus

    return LocalBus(Path(settings.data_dir) / "bus")


def log_bus(settings: Settings, simulate: bool) -> None:
    """Say at start-up where events go; on the embedded ``local`` bus, say loudly that they stay here.

    A node installed without ``bus = "kafka"`` would otherwise publish into a file under its
    data directory forever, with every metric green.
    """
    where = {"bus": settings.bus, "topic": settings.kafka.usage_topic}
    if settings.bus == "kafka":
        log.info("publishing to Kafka", extra=where | {"bootstrap": settings.kafka.bootstrap})
        return
    bus_dir = str(Path(settings.data_dir).absolute() / "bus")
    if simulate:
        log.info("publishing to the local bus (simulation)", extra=where | {"path": bus_dir})
        return
    log.warning(
        "bus is 'local': events stay on this machine and no consumer elsewhere will see them; "
        "set bus = \"kafka\" in gpuledger.toml (or GPULEDGER_BUS=kafka) on a GPU node",
        extra=where | {"path": bus_dir},
    )


def _registry_file(settings: Settings, simulate: bool) -> Path:
    """The registry given; a simulated node alone may fall back to the packaged sample."""
    if settings.registry is None and simulate:
        from gpuledger.settings import packaged_example

        return packaged_example("registry.toml")
    return settings.registry_file()


def run_collect(settings: Settings, options: CollectOptions) -> RunStats:
    """Wire the collector from ``settings`` and run it; returns the run's statistics."""
    c = settings.collector
    log_bus(settings, options.simulate)
    registry = load_registry(_registry_file(settings, options.simulate))
    project_entity = {name: p.entity for name, p in registry.projects.items()}
    attributor = ProcAttributor(
        c.proc_root,
        _static_owner(settings, project_entity, options.simulate),
        project_entity,
        job_projects=dict(c.job_projects),
        namespace_projects=dict(c.namespace_projects),
    )
    integrator = IntervalIntegrator(c.site, c.node, c.interval_s, c.sample_period_s, attributor)
    metrics_registry = CollectorRegistry()
    metrics = CollectorMetrics(metrics_registry)
    server = None
    with _nvml(options.simulate, c.node), NvmlReader(timeout_s=c.nvml_timeout_s) as reader:
        publisher = SpoolingPublisher(
            _bus(settings).producer(settings.kafka.usage_topic), settings.spool_dir, c.spool_max_bytes,
            background=True,  # sampling never waits on the network
        )
        try:
            if options.metrics:
                server, port = serve(metrics_registry, c.metrics_port)
                log.info("metrics endpoint", extra={"url": f"http://0.0.0.0:{port}/metrics"})
            agent = CollectorAgent(
                reader, integrator, publisher, node=c.node, sample_period_s=c.sample_period_s,
                metrics=metrics, spool_depth=lambda: (publisher.backlog_bytes, publisher.backlog_messages),
                # a daemon keeps its open interval across restarts; a bounded run publishes it
                checkpoint=None if options.once or options.duration_s else FileCheckpoint(
                    settings.spool_dir / "open-interval.json"
                ),
            )
            with _stop_on_signals(agent):
                return agent.run(duration_s=options.duration_s, max_rounds=1 if options.once else None)
        finally:
            publisher.close()
            if server is not None:
                server.shutdown()


@contextlib.contextmanager
def _stop_on_signals(agent: CollectorAgent) -> Iterator[None]:
    """SIGTERM and SIGINT end the loop gracefully (the open interval is published)."""

    def handler(signum: int, _frame: object) -> None:
        log.info("stopping on signal", extra={"signal": signal.Signals(signum).name})
        agent.stop()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


LOGGED_PACKAGES = ("gpuledger", "collectors", "streams", "storage", "accounting", "apscheduler")


@contextlib.contextmanager
def json_logs(level: str) -> Iterator[None]:
    """Structured logs (one JSON object per line on stderr) for the duration of the command.

    The long-running commands (``collect``, ``consume``, ``schedule``) all log this way, so one
    log shipper configuration reads every gpuledger process.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter())
    loggers = [logging.getLogger(name) for name in LOGGED_PACKAGES]
    saved = [(lg, lg.handlers[:], lg.level, lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.handlers[:] = [handler]
        lg.setLevel(level.upper())
        lg.propagate = False
    try:
        yield
    finally:
        for lg, handlers, lvl, propagate in saved:
            lg.handlers[:] = handlers
            lg.setLevel(lvl)
            lg.propagate = propagate


def register(app: typer.Typer) -> None:
    """Add ``collect`` to the main app."""

    @app.command()
    def collect(
        data_dir: DataDirOpt = None,
        registry: RegistryOpt = None,
        bus: BusOpt = None,
        simulate: Annotated[
            bool, typer.Option("--simulate", help="Read a fake NVML (a normal 8-GPU node) instead of the GPUs.")
        ] = False,
        sample_period: Annotated[
            float | None, typer.Option("--sample-period", help="Seconds between samples (default 10).", show_default=False)
        ] = None,
        interval: Annotated[
            int | None, typer.Option("--interval", help="Event interval in seconds; divides 3600 (default 60).", show_default=False)
        ] = None,
        metrics_port: Annotated[
            int | None, typer.Option("--metrics-port", help="Prometheus /metrics port (default 9400; 0: any free port).", show_default=False)
        ] = None,
        no_metrics: Annotated[bool, typer.Option("--no-metrics", help="Do not serve Prometheus metrics.")] = False,
        once: Annotated[bool, typer.Option("--once", help="Take one sample, publish it as a partial interval, exit.")] = False,
        duration: Annotated[
            float | None, typer.Option("--duration", help="Run this many seconds, then stop as on SIGTERM.", show_default=False)
        ] = None,
        node: Annotated[str | None, typer.Option("--node", help="Node name in events (default: host name).", show_default=False)] = None,
        site: Annotated[str | None, typer.Option("--site", help="Data-centre name in events (default: local).", show_default=False)] = None,
        proc_root: Annotated[
            Path | None, typer.Option("--proc-root", help="Process table to attribute GPUs from (default /proc).", show_default=False)
        ] = None,
        log_level: Annotated[str, typer.Option("--log-level", help="debug, info, warning or error.")] = "info",
    ) -> None:
        """Sample this node's GPUs, turn the samples into usage events, and publish them (spooled)."""
        def body() -> RunStats:
            settings = settings_from(data_dir, registry, bus)
            given = {
                "sample_period_s": sample_period, "interval_s": interval, "metrics_port": metrics_port,
                "node": node, "site": site, "proc_root": proc_root,
            }
            updates = {k: v for k, v in given.items() if v is not None}
            if updates:
                from gpuledger.settings import CollectorSettings, SettingsError

                try:
                    collector = CollectorSettings.model_validate(settings.collector.model_dump() | updates)
                except ValueError as exc:
                    raise SettingsError(f"invalid collector options: {exc}") from exc
                settings = settings.model_copy(update={"collector": collector})
            return run_collect(settings, CollectOptions(simulate, once, duration, not no_metrics))

        with json_logs(log_level):
            stats = run_command(body)
        out.print(
            f"collect: {stats.rounds} rounds, {stats.samples} device samples, "
            f"{stats.events_published} events published, {stats.events_pending} pending",
            highlight=False,
        )


def main() -> None:
    """``python -m gpuledger.cli_collect [OPTIONS]``: the ``collect`` command on its own.

    Same options as ``gpuledger collect``; it imports only the collector side, so the agent's
    memory stays small on every node (the full CLI also loads the consumer side's Polars and
    pyarrow). The systemd unit and the container entrypoint use it.
    """
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    register(app)
    command = typer.main.get_command(app)
    quiet_flags(command)
    command(prog_name="gpuledger-collect")


if __name__ == "__main__":
    main()
