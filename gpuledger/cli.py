"""The ``gpuledger`` command line: parse, build settings, call a library function.

Commands owned by other modules are added by their ``register(app)``:
``cli_collect`` (collect), ``cli_accounting`` (close, registry), ``cli_audit`` (verify,
export, report, schedule, keys).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from gpuledger import __version__, cli_accounting, cli_audit, cli_collect, cli_offsets, cli_storage
from gpuledger.cli_common import (
    BusOpt,
    DataDirOpt,
    QuietFlagsGroup,
    RegistryOpt,
    console,
    disk_full,
    out,
    run_command,
    settings_from,
)
from gpuledger.settings import Settings
from storage.errors import GpuledgerError
from streams.errors import BusUnavailable

if TYPE_CHECKING:
    from streams.consumer import RunTotals, StreamConsumer

log = logging.getLogger(__name__)

app = typer.Typer(
    cls=QuietFlagsGroup,
    name="gpuledger",
    help="GPU-hour accounting: NVML collectors → bus → Parquet → monthly billing and compliance ledgers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        out.print(f"gpuledger {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """gpuledger: one trusted record of who used how many GPU-hours."""


@app.command()
def demo(
    data_dir: DataDirOpt = None,
    registry: RegistryOpt = None,
    bus: BusOpt = None,
    month: Annotated[
        str | None,
        typer.Option("--month", help="KST month to simulate (default: 2026-10, the month the demo registry's rate change falls in)."),
    ] = None,
    nodes_per_entity: Annotated[
        int | None,
        typer.Option(help="At most this many 8-GPU nodes per entity (default: the whole scaled fleet, 33 nodes).", show_default=False),
    ] = None,
) -> None:
    """Simulate a month of a GPU fleet through the whole pipeline, close it, print the summary.

    Runs against the demo programme registry (examples/registry-demo.toml: the programme scaled
    to the simulated fleet) unless --registry is given; writes the report and the finance pack.
    """

    def body() -> None:
        from gpuledger import demo as demo_mod

        settings = settings_from(data_dir or Path("gpuledger-data/demo"), registry or demo_mod.demo_registry_path(), bus)
        _demo(settings, month or demo_mod.DEMO_MONTH, nodes_per_entity)

    run_command(body)


def _demo(settings: Settings, period: str, nodes_per_entity: int | None) -> None:
    from gpuledger import demo as demo_mod
    from gpuledger.summary import print_close_summary
    from gpuledger.wiring import make_store, registry_from

    reg = registry_from(settings)
    demo_mod.prepare_data_dir(settings.local_data_dir("the demo"))
    plan = demo_mod.plan(reg, period, nodes_per_entity)
    store = make_store(settings)
    started = time.perf_counter()
    _simulate_month(settings, reg, plan, store)
    if settings.bus == "local":  # everything is consumed: keep only what a group has not read
        from streams.localbus import LocalBus

        LocalBus(Path(settings.data_dir) / "bus").trim(settings.kafka.usage_topic)
    result = demo_mod.close_period(store, reg, period)
    print_close_summary(store, period, result, registry=reg)
    for label, path in demo_mod.report_and_export(store, reg, period, Path(settings.registry_file())):
        out.print(f"{label} {path}", soft_wrap=True, highlight=False)
    console.print(f"Done in {time.perf_counter() - started:.1f} s. Data under {Path(settings.data_dir).absolute()}")


def _simulate_month(settings: Settings, reg, plan, store) -> None:  # noqa: ANN001 - server-side types imported on use
    """The simulated fleet → bus → consumer, day by day, with a progress bar; prints the counts."""
    from collectors.publish import DirectPublisher
    from gpuledger import demo as demo_mod
    from gpuledger.wiring import make_bus, make_stream_consumer

    the_bus = make_bus(settings)
    publisher = DirectPublisher(the_bus.producer(settings.kafka.usage_topic))
    consumer = make_stream_consumer(settings, reg, the_bus, store)
    gpus = sum(s.gpus for s in plan.nodes)
    lead_in = f" and the last day of {plan.previous}" if plan.lead_in_s else ""
    console.print(
        f"Simulating {plan.period}{lead_in} (KST): {len(plan.nodes)} nodes, {gpus} GPUs, "
        f"{plan.interval_s // 60}-minute events, bus={settings.bus}, data in {settings.data_dir}"
    )

    def close_previous(previous: str) -> None:
        closed = demo_mod.close_period(store, reg, previous)
        progress.console.print(f"{closed.message} (on the 1st, as scheduled; events still in spools arrive later)")

    with _progress() as progress, consumer:
        task = progress.add_task("collect → bus → consume", total=(plan.end_s - plan.first_s) // 86400)
        published, totals = demo_mod.simulate(
            plan,
            reg,
            publisher,
            lambda: consumer.run(until_idle=True, idle_polls=1),
            on_day=lambda day, days, n: progress.update(task, completed=day, description=f"day {day}/{days}: {n:,} events"),
            close_previous=close_previous,
        )
    console.print(
        f"Published {published:,} events; consumer accepted {totals.accepted:,}, "
        f"refused {totals.refused:,}, duplicates dropped {totals.duplicates:,}."
    )


class Wire(StrEnum):
    """How ``ingest`` encodes messages (see streams/wire.py)."""

    arrow = "arrow"
    json = "json"


@app.command()
def ingest(
    file: Annotated[Path, typer.Argument(help="JSON Lines file of usage events (schema v1), '-' for stdin.")],
    data_dir: DataDirOpt = None,
    registry: RegistryOpt = None,
    bus: BusOpt = None,
    lines_per_message: Annotated[int, typer.Option(help="Events per bus message.")] = 5000,
    wire: Annotated[
        Wire,
        typer.Option(
            help="Message encoding: 'arrow' (one Arrow IPC batch per message; lines that do not "
            "parse still go as JSON) or 'json' (JSON Lines, as collectors send)."
        ),
    ] = Wire.arrow,
) -> None:
    """Publish a JSON Lines file of events onto the bus (the consumer validates and stores them)."""

    def body() -> None:
        from gpuledger.ingest import ingest_file
        from gpuledger.wiring import accounts_of, make_bus, registry_from

        settings = settings_from(data_dir, registry, bus)
        accounts = accounts_of(registry_from(settings))
        producer = make_bus(settings).producer(settings.kafka.usage_topic)
        try:
            report = ingest_file(file, producer, accounts, lines_per_message, str(wire))
            producer.close()
        except BusUnavailable as exc:
            with contextlib.suppress(BusUnavailable):
                producer.close()  # what was not delivered is dropped: the message says to ingest again
            where = f"GPULEDGER_KAFKA_BOOTSTRAP={settings.kafka.bootstrap}" if settings.bus == "kafka" else settings.bus
            raise BusUnavailable(
                f"{exc} ({where}); bring the bus back and ingest {file} again "
                "(events that did arrive are dropped as duplicates by the consumer)"
            ) from exc
        reasons = ", ".join(f"{code} ×{n}" for code, n in sorted(report.refusals.items()))
        out.print(
            f"ingest {file}: {report.lines:,} lines published to {settings.kafka.usage_topic} "
            f"({settings.bus}); {report.valid:,} valid, {report.refused:,} will be refused"
            + (f" ({reasons})" if reasons else "")
        )

    run_command(body)


@app.command()
def consume(
    data_dir: DataDirOpt = None,
    registry: RegistryOpt = None,
    bus: BusOpt = None,
    until_idle: Annotated[bool, typer.Option("--until-idle", help="Drain what is on the bus, then exit.")] = False,
    metrics_port: Annotated[
        int | None,
        typer.Option("--metrics-port", help="Serve Prometheus /metrics on this port (0: any free port; default: not served).", show_default=False),
    ] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="debug, info, warning or error.")] = "info",
) -> None:
    """Run the stream consumer: validate, dedupe, aggregate and write Parquet, then commit offsets.

    It writes its progress to a heartbeat file that `gpuledger health` checks. Logs are JSON
    lines on stderr, as the collector's; the final count goes to stdout.
    """
    with cli_collect.json_logs(log_level):
        run_command(lambda: _consume(settings_from(data_dir, registry, bus), until_idle, metrics_port))


def _consume(settings: Settings, until_idle: bool, metrics_port: int | None) -> None:
    from gpuledger.wiring import make_bus, make_store, make_stream_consumer, registry_from

    logging.getLogger("gpuledger.consumer").info("consumer starting", extra={
        "bus": settings.bus, "topic": settings.kafka.usage_topic, "group": settings.kafka.consumer_group,
        "data_dir": str(settings.data_dir), "registry": str(settings.registry_file()),
        **({"bootstrap": settings.kafka.bootstrap} if settings.bus == "kafka" else {}),
    })
    reg = registry_from(settings)
    port = metrics_port if metrics_port is not None else settings.consumer.metrics_port
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with _served_metrics(port) as fresh_registry:
        totals = run_riding_out_full_disk(
            lambda: make_stream_consumer(
                settings, reg, make_bus(settings), make_store(settings), metrics_registry=fresh_registry()
            ),
            data_dir=Path(settings.data_dir),
            until_idle=until_idle,
            idle_polls=settings.consumer.idle_polls,
            stop=stop,
        )
    out.print(
        f"consume: {totals.accepted:,} events accepted, {totals.refused:,} refused (kept in quarantine/), "
        f"{totals.duplicates:,} duplicates dropped, {totals.replayed:,} messages already stored "
        f"(skipped by offset), in {totals.batches} batches"
    )


@contextlib.contextmanager
def _served_metrics(port: int | None) -> Iterator[Callable[[], object]]:
    """One /metrics for the whole run (``port`` None: not served); yields a function that gives
    a fresh registry for each consumer built. A consumer rebuilt after a full disk reports into
    a fresh registry (metrics cannot be registered twice), which the served one delegates to."""
    from prometheus_client import CollectorRegistry

    from collectors.metrics import serve

    served = CollectorRegistry()
    current: list[CollectorRegistry] = [CollectorRegistry()]

    class _Current:
        def collect(self):  # noqa: ANN202 - prometheus_client's collector protocol
            yield from current[0].collect()

    served.register(_Current())
    server = None
    if port is not None:
        server, bound = serve(served, port)
        console.print(f"consume: metrics on http://0.0.0.0:{bound}/metrics", highlight=False)

    def fresh() -> CollectorRegistry:
        current[0] = CollectorRegistry()
        return current[0]

    try:
        yield fresh
    finally:
        if server is not None:
            server.shutdown()


@app.command()
def health(
    data_dir: DataDirOpt = None,
    max_stale_s: Annotated[
        float, typer.Option("--max-stale-s", min=1, help="Seconds without progress (or, with a backlog, without a commit) before the consumer counts as unhealthy.")
    ] = 300,
    heartbeat_file: Annotated[
        Path | None,
        typer.Option("--heartbeat-file", help="Heartbeat of the consumer (default <data-dir>/consumer.heartbeat.json).", show_default=False),
    ] = None,
) -> None:
    """Exit 0 when the stream consumer on this data dir is making progress, 1 naming why not (a container health check)."""

    def body() -> None:
        from gpuledger.health import HeartbeatFile, assess, describe

        settings = settings_from(data_dir)
        where = heartbeat_file if heartbeat_file is not None else settings.heartbeat_file
        progress = HeartbeatFile(where, s3_options=settings.storage.s3_options()).read()
        now_s = time.time()
        problems = assess(progress, now_s, max_stale_s)
        if problems:
            console.print(f"unhealthy: {'; '.join(problems)}", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(1)
        out.print(f"healthy: {describe(progress, now_s)}", markup=False, highlight=False, soft_wrap=True)

    run_command(body)


quarantine_app = typer.Typer(help="Inspect and replay refused events.", no_args_is_help=True)
app.add_typer(quarantine_app, name="quarantine")


@quarantine_app.command("replay")
def quarantine_replay(
    data_dir: DataDirOpt = None,
    registry: RegistryOpt = None,
    month: Annotated[str | None, typer.Option("--month", help="Only events of this KST month (YYYY-MM).")] = None,
) -> None:
    """Re-check events refused for an unknown entity or project against the registry as it is now.

    Events that now pass are stored exactly once (replaying twice changes nothing); the rest stay
    in quarantine. Usage of a closed month is billed as corrections by the next close.
    """

    def body() -> None:
        from gpuledger.wiring import accounts_of, make_store, registry_from
        from streams.pipeline import BatchProcessor
        from streams.replay import replay_quarantine

        settings = settings_from(data_dir, registry)
        store = make_store(settings)
        results = replay_quarantine(store, BatchProcessor(store, accounts_of(registry_from(settings))), period=month)
        accepted = sum(r.accepted for r in results)
        still = sum(r.refused for r in results)
        out.print(f"quarantine replay: {accepted:,} events accepted now, {still:,} still refused (kept in quarantine/)")

    run_command(body)


@quarantine_app.command("list")
def quarantine_list(
    data_dir: DataDirOpt = None,
    registry: RegistryOpt = None,
    month: Annotated[str | None, typer.Option("--month", help="Only this KST month (YYYY-MM, or 'unknown').")] = None,
) -> None:
    """Count refused lines per period and reason (the lines themselves are in quarantine/).

    Lines that ``quarantine replay`` re-admitted (a registry refusal whose event is in raw/ now,
    as the line carried it) are not counted as refused: they show in their own column.
    """

    def body() -> None:
        from rich.table import Table

        from gpuledger.wiring import make_store

        settings = settings_from(data_dir, registry)
        counts = _quarantine_counts(make_store(settings), month)
        where = f" for {month}" if month else ""
        if counts is None or counts.height == 0:
            out.print(f"quarantine: no refused lines{where} under {settings.data_dir}", markup=False, highlight=False)
            return
        table = Table(title="quarantine")
        for name in ("period", "reason", "lines", "re-admitted", "GPU-hours"):
            table.add_column(name, justify="left" if name in ("period", "reason") else "right")
        for period, reason, lines, readmitted, micros in counts.iter_rows():
            table.add_row(period, reason, f"{lines:,}", f"{readmitted:,}", f"{(micros or 0) / 3.6e9:,.3f}")
        out.print(table)
        out.print(
            f"{int(counts['lines'].sum()):,} line(s) still refused{where}; {int(counts['readmitted'].sum()):,} "
            "re-admitted by `quarantine replay` (counted as usage now)",
            markup=False, highlight=False,
        )

    run_command(body)


def _quarantine_counts(store, month: str | None):  # noqa: ANN001, ANN202 - Polars is imported on use
    """Per period × reason: lines still refused, lines a replay re-admitted, refused GPU-µs; None if none."""
    import polars as pl

    from storage.schemas import QUARANTINE, RAW_EVENTS
    from streams.replay import with_readmitted

    where_dir = f"/period={month}" if month else ""  # a month reads only its own partitions
    files = store.files(f"quarantine{where_dir}")
    if not files:
        return None
    raw_files = store.files(f"raw{where_dir}")
    frame = with_readmitted(
        store.scan_files(files, QUARANTINE), store.scan_files(raw_files, RAW_EVENTS) if raw_files else None
    )
    return (
        frame.group_by("period", "reason_code")
        .agg(
            (~pl.col("readmitted")).sum().alias("lines"),
            pl.col("readmitted").sum().alias("readmitted"),
            pl.col("gpu_microseconds").filter(~pl.col("readmitted")).sum().alias("us"),
        )
        .sort("period", "reason_code")
        .collect()
    )


def run_riding_out_full_disk(
    build: Callable[[], StreamConsumer],
    *,
    data_dir: Path,
    until_idle: bool,
    idle_polls: int,
    stop: threading.Event,
    retry_s: float = 5.0,
    retry_max_s: float = 300.0,
) -> RunTotals:
    """Run the stream consumer; when the disk fills up, wait and start it again.

    A batch that failed for lack of space was never committed: the consumer is closed and
    rebuilt as after a crash (the bus re-reads from the last commit, and the offsets stored
    with the rows skip anything already stored), so nothing is lost or doubled. A one-shot
    ``--until-idle`` drain does not wait: it ends with a one-line error naming the data dir.
    """
    from streams.consumer import RunTotals

    totals = RunTotals()
    full = 0
    while not stop.is_set():
        try:
            with build() as consumer:
                consumer.run(until_idle=until_idle, idle_polls=idle_polls, stop=stop, on_batch=totals.add)
            return totals
        except Exception as exc:  # noqa: BLE001 - only a full disk is handled here
            if not disk_full(exc):
                raise
            if until_idle:
                raise GpuledgerError(
                    f"no space left on the device of {data_dir}: the last batch was not committed; "
                    "free some space and run consume again"
                ) from exc
            wait_s = min(retry_max_s, retry_s * 2 ** min(full, 16))
            full += 1
            log.warning("no space left on the device of %s; trying again in %.0f s", data_dir, wait_s)
            stop.wait(wait_s)
    return totals


bus_app = typer.Typer(help="Look after the embedded local bus.", no_args_is_help=True)
app.add_typer(bus_app, name="bus")


@bus_app.command("trim")
def bus_trim(data_dir: DataDirOpt = None, registry: RegistryOpt = None) -> None:
    """Drop the part of the local bus's log that every consumer group has committed.

    Safe while producers and consumers run; a group that never committed starts at the first
    record kept. Kafka trims itself (topic retention): this is for the embedded bus only.
    """

    def body() -> None:
        from streams.localbus import LocalBus

        settings = settings_from(data_dir, registry)
        if not (Path(settings.data_dir) / "bus").is_dir():
            raise GpuledgerError(
                f"{Path(settings.data_dir) / 'bus'} holds no embedded bus: bus trim is for the local bus "
                "(Kafka trims by topic retention)"
            )
        the_bus = LocalBus(Path(settings.data_dir) / "bus")
        for topic in the_bus.topics():
            result = the_bus.trim(topic)
            out.print(
                f"bus trim {topic}: dropped {result.dropped_records:,} records ({result.dropped_bytes:,} bytes) "
                f"that every group has consumed; {result.kept_bytes:,} bytes kept"
            )

    run_command(body)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    )


cli_collect.register(app)
cli_accounting.register(app)
cli_audit.register(app)
cli_offsets.register(app)
cli_storage.register(app)


def main() -> None:
    """The console script. A command that failed has printed its one line: it exits at once,
    without the interpreter's teardown, where delta-rs's native threads were seen to abort the
    process (``terminate called without an active exception``, exit -6) after the right line."""
    try:
        app()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if code == 0:
            raise
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":
    main()
