"""Options every command takes, and the one way a command turns them into settings.

Each command declares ``data_dir``, and ``registry`` and ``bus`` where it uses them, with these
annotated types, and calls :func:`settings_from` first thing. Errors that are ours (:class:`GpuledgerError`) end the
command with exit status 1 and a one-line reason on stderr (see :func:`run_command`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal, TypeVar

import typer
from rich.console import Console

from gpuledger.settings import Settings, load_settings
from storage.errors import GpuledgerError

DataDirOpt = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Root of the datasets (default ./gpuledger-data).", show_default=False),
]
RegistryOpt = Annotated[
    Path | None,
    typer.Option("--registry", help="registry.toml (default examples/registry.toml).", show_default=False),
]
BusOpt = Annotated[
    Literal["local", "kafka"] | None,
    typer.Option("--bus", help="local (embedded, default) or kafka (GPULEDGER_KAFKA_BOOTSTRAP).", show_default=False),
]

console = Console(stderr=True)
out = Console()

T = TypeVar("T")


def settings_from(data_dir: Path | None, registry: Path | None = None, bus: str | None = None) -> Settings:
    return load_settings(data_dir=data_dir, registry=registry, bus=bus)


def run_command(body: Callable[[], T]) -> T:
    """Run a command body; our errors become exit 1 with a one-line reason."""
    try:
        return body()
    except GpuledgerError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)
