"""Accounting commands: ``close --month YYYY-MM`` and ``registry check FILE``.

Thin: parse, build settings, call :mod:`accounting`, print. The summary table is the one the
demo prints (``gpuledger.summary``), read back from the written ledgers. Library imports sit
inside the commands so that loading the CLI for another command stays light.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gpuledger.cli_common import BusOpt, DataDirOpt, RegistryOpt, console, out, run_command, settings_from

registry_app = typer.Typer(help="Check the registry (entities, allocations, projects, rate cards).", no_args_is_help=True)


def close(
    month: Annotated[str, typer.Option("--month", help="KST calendar month to close, YYYY-MM.")],
    data_dir: DataDirOpt = None,
    registry: RegistryOpt = None,
    bus: BusOpt = None,
    signing_key: Annotated[
        Path | None,
        typer.Option("--signing-key", help="Ed25519 private key (PEM) to sign the period's manifest."),
    ] = None,
    early: Annotated[
        bool,
        typer.Option("--early", help="Close a month that has not ended yet in Korea (usage after now becomes next month's corrections)."),
    ] = False,
) -> None:
    """Close a KST month: write the billing and compliance ledgers, seal them, print a summary.

    Closing a month that is closed already changes nothing and says so; late usage is billed as corrections by the next close.
    """

    def body() -> None:
        # Imported here: the close pulls in Polars/pyarrow, which other commands (collect) do not need.
        from accounting.close import close_month
        from accounting.registry import load_registry
        from gpuledger.summary import print_close_summary
        from storage.dataset import Store

        _refuse_unfinished(month, early)
        settings = settings_from(data_dir, registry, bus)
        reg = load_registry(settings.registry)
        store = Store(settings.data_dir)
        with console.status(f"closing {month}") as status:
            result = close_month(
                store, reg, month, signing_key=signing_key, progress=lambda msg: status.update(f"{month}: {msg}")
            )
        console.print(result.message)
        print_close_summary(store, month, result, registry=reg)

    run_command(body)


def _refuse_unfinished(month: str, early: bool) -> None:
    """A month still running in KST is not closed by accident: its later usage would be billed late."""
    from datetime import UTC, datetime

    from accounting.errors import CloseError
    from accounting.usage import parse_month

    ends = parse_month(month).end_utc
    if datetime.now(UTC) < ends and not early:
        raise CloseError(
            f"{month} has not ended in Korea (it ends {ends:%Y-%m-%d %H:%M} UTC); closing it now would bill "
            "the rest of the month as corrections next month. Pass --early to close it anyway."
        )


def check(
    file: Annotated[Path, typer.Argument(help="registry.toml to validate.", show_default=False)],
) -> None:
    """Validate a registry file; exit 1 listing every problem found."""

    def body() -> None:
        from accounting.errors import RegistryError
        from accounting.registry import load_registry

        try:
            reg = load_registry(file)
        except RegistryError as exc:
            console.print(f"{exc.source}: {len(exc.problems)} problem(s)", markup=False, highlight=False)
            for problem in exc.problems:
                console.print(f"  - {problem}", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        allocated = sum(a.count for e in reg.entities.values() for a in e.allocations)
        out.print(
            f"{file}: ok — {len(reg.entities)} entities, {len(reg.projects)} projects, "
            f"{len(reg.rates)} rate cards, {allocated:,} GPUs in allocation rows, rounding {reg.rounding}",
            markup=False,
            highlight=False,
        )

    run_command(body)


def register(app: typer.Typer) -> None:
    """Add ``close`` and ``registry check`` to the main app."""
    app.command(name="close")(close)
    registry_app.command(name="check")(check)
    app.add_typer(registry_app, name="registry")
