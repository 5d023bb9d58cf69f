"""Audit commands: ``verify``, ``export``, ``report``, ``schedule``, ``keys generate``.

Thin: parse, build settings, call :mod:`storage.manifest` or :mod:`accounting`, print.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gpuledger.cli_common import DataDirOpt, RegistryOpt, console, out, run_command, settings_from, store_of

keys_app = typer.Typer(help="Ed25519 keys that sign period manifests.", no_args_is_help=True)

MonthOpt = Annotated[str, typer.Option("--month", help="KST calendar month, YYYY-MM (closed already).")]
OutOpt = Annotated[
    Path | None,
    typer.Option("--out", help="Directory to write into (default: under the data dir).", show_default=False),
]
SigningKeyOpt = Annotated[
    Path | None,
    typer.Option("--signing-key", help="Ed25519 private key (PEM) that signs the manifests of scheduled closes."),
]


def verify(
    data_dir: DataDirOpt = None,
    registry: RegistryOpt = None,
    public_key: Annotated[
        Path | None,
        typer.Option("--public-key", help="Ed25519 public key (PEM); with it every manifest signature is checked."),
    ] = None,
    every_file: Annotated[
        bool,
        typer.Option("--all", help="Re-hash the sealed files of every period (not only the newest) and every live table file against the SHA-256 recorded at its commit."),
    ] = False,
) -> None:
    """Walk the manifest chain and re-hash the newest period's sealed files (--all: every file);
    exit 1 naming every difference.

    A data directory with nothing sealed is a failure too (exit 1): "ok" would say nothing was
    checked, which is usually a wrong --data-dir.
    """
    from storage.manifest import verify as verify_store

    def body() -> None:
        settings = settings_from(data_dir, registry)
        store = store_of(settings)
        report = verify_store(store, public_key=public_key, every_file=every_file)
        damaged: list[str] = []
        if every_file:
            from storage.deltalog import damaged_files
            from storage.schemas import TABLES

            for table in TABLES:
                damaged.extend(damaged_files(store, table))
        for line in damaged:
            out.print(f"damaged since commit: {line}", markup=False, highlight=False, soft_wrap=True)
        for note in report.notes:
            console.print(f"note: {note}", markup=False, highlight=False, soft_wrap=True)
        for difference in report.differences:
            out.print(str(difference), markup=False, highlight=False, soft_wrap=True)
        summary = (
            f"{len(report.periods)} period(s), {report.files_checked} file(s), "
            f"{report.signatures_checked} signature(s) checked"
        )
        if every_file:
            summary += ", every live table file re-hashed"
        if not report.ok or damaged:
            console.print(
                f"verify FAILED: {len(report.differences) + len(damaged)} difference(s); {summary}", markup=False
            )
            raise typer.Exit(1)
        if not report.periods:
            console.print(
                f"verify: nothing sealed under {Path(settings.data_dir).absolute()} (no manifests): nothing was "
                "verified. Check --data-dir, or close a month first (`gpuledger close --month YYYY-MM`).",
                markup=False, highlight=False, soft_wrap=True,
            )
            raise typer.Exit(1)
        out.print(f"verify ok: {summary}", markup=False)

    run_command(body)


def export(
    month: MonthOpt,
    out_dir: OutOpt = None,
    data_dir: DataDirOpt = None,
    registry: RegistryOpt = None,
    raw_events: Annotated[
        bool,
        typer.Option("--raw-events", help="Add the month's raw events (Parquet, with SHA-256) to the auditor pack."),
    ] = False,
) -> None:
    """Write the finance pack (CSV/XLSX statements in KRW) and the auditor pack of a closed month.

    A sealed month is exported with the registry it was sealed with; a --registry that differs is refused.
    """
    from accounting.export import export_month
    from accounting.registry import load_registry

    def body() -> None:
        settings = settings_from(data_dir, registry)
        # a sealed month speaks with the registry sealed with it; the one named here (option,
        # gpuledger.toml, GPULEDGER_REGISTRY) only where none was sealed; never a packaged sample
        reg = load_registry(settings.registry) if settings.registry is not None else None
        result = export_month(
            store_of(settings), month, out_dir, registry=reg, registry_file=settings.registry,
            registry_explicit=registry is not None, raw_events=raw_events,
        )
        for total in result.totals:
            out.print(f"{total.entity:<12} {total.total_krw:>20,} KRW", markup=False, highlight=False)
        out.print(f"finance pack: {result.out_dir / 'finance'}", markup=False, highlight=False)
        out.print(f"auditor pack: {result.out_dir / 'auditor'} (see README.md)", markup=False, highlight=False)

    run_command(body)


def report(
    month: MonthOpt,
    out_dir: OutOpt = None,
    data_dir: DataDirOpt = None,
    registry: RegistryOpt = None,
) -> None:
    """Draw the month's charts (PNG) and a self-contained HTML page (GPU 사용 보고서)."""
    from accounting.registry import load_registry
    from accounting.report import render_report

    def body() -> None:
        settings = settings_from(data_dir, registry)
        reg = load_registry(settings.registry) if settings.registry is not None else None
        result = render_report(store_of(settings), month, out_dir, registry=reg, registry_explicit=registry is not None)
        for name in result.files:
            out.print(str(result.out_dir / name), markup=False, highlight=False)

    run_command(body)


def schedule(
    data_dir: DataDirOpt = None,
    registry: RegistryOpt = None,
    signing_key: SigningKeyOpt = None,
    close_hour: Annotated[int, typer.Option("--close-hour", min=0, max=23, help="KST hour of the monthly close on the 1st.")] = 1,
    metrics_port: Annotated[
        int | None,
        typer.Option("--metrics-port", help="Serve Prometheus /metrics on this port (0: any free port; default: not served).", show_default=False),
    ] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="debug, info, warning or error.")] = "info",
) -> None:
    """Run the scheduled jobs (hourly compaction, daily compliance snapshot, monthly close) until stopped.

    At start it closes every month that is due and not closed yet (exactly once), then keeps
    its jobs in <data-dir>/scheduler/jobs.sqlite. Logs are JSON lines on stderr, as the collector's.
    """
    from gpuledger.cli_collect import json_logs

    with json_logs(log_level):
        run_command(lambda: _schedule(settings_from(data_dir, registry), signing_key, close_hour, metrics_port))


def _schedule(settings, signing_key: Path | None, close_hour: int, metrics_port: int | None) -> None:  # noqa: ANN001
    import logging

    from prometheus_client import CollectorRegistry

    from accounting.scheduler import ScheduleConfig, serve
    from accounting.scheduler_metrics import SchedulerMetrics
    from collectors.metrics import serve as serve_metrics

    log = logging.getLogger("gpuledger.scheduler")
    config = ScheduleConfig(
        data_dir=settings.data_dir, registry=settings.registry_file(), signing_key=signing_key, close_hour=close_hour
    )
    metrics_registry = CollectorRegistry()
    metrics = SchedulerMetrics(metrics_registry, store_of(settings))
    server = None
    if metrics_port is not None:
        server, bound = serve_metrics(metrics_registry, metrics_port)
        log.info("metrics served", extra={"url": f"http://0.0.0.0:{bound}/metrics"})

    def started(run) -> None:  # noqa: ANN001
        metrics.observe_close_run(run)
        log.info(
            "scheduler started",
            extra={
                "data_dir": str(settings.data_dir), "registry": str(config.registry), "close_hour_kst": close_hour,
                "catch_up_closed": list(run.closed), "signing": signing_key is not None,
            },
        )

    try:
        serve(config, on_start=started, on_job_end=metrics.job_ended)
    finally:
        if server is not None:
            server.shutdown()


def generate(
    private: Annotated[Path, typer.Option("--private", help="Where to write the private key (PEM, mode 0600).")],
    public: Annotated[Path, typer.Option("--public", help="Where to write the public key (PEM) for auditors.")],
) -> None:
    """Generate an Ed25519 key pair for signing manifests (refuses to overwrite a private key)."""
    from storage.manifest import generate_keypair

    def body() -> None:
        generate_keypair(private, public)
        out.print(f"private key: {private} (keep it; pass --signing-key)\npublic key:  {public} (give it to auditors)",
                  markup=False, highlight=False)

    run_command(body)


def register(app: typer.Typer) -> None:
    """Add ``verify``, ``export``, ``report``, ``schedule`` and ``keys generate`` to the main app."""
    app.command(name="verify")(verify)
    app.command(name="export")(export)
    app.command(name="report")(report)
    app.command(name="schedule")(schedule)
    keys_app.command(name="generate")(generate)
    app.add_typer(keys_app, name="keys")
