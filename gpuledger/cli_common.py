"""Options every command takes, and the one way a command turns them into settings.

Each command declares ``data_dir``, ``registry`` and ``bus`` with these annotated types and
calls :func:`settings_from` first thing. Errors that are ours (:class:`GpuledgerError`) end the
command with exit status 1 and a one-line reason on stderr (see :func:`run_command`).
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal, NoReturn, TypeVar

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


_data_dir: list[Path] = []  # the data dir of the running command, for error reports


def settings_from(data_dir: Path | None, registry: Path | None, bus: str | None) -> Settings:
    settings = load_settings(data_dir=data_dir, registry=registry, bus=bus)
    _data_dir[:] = [Path(settings.data_dir)]
    return settings


def run_command(body: Callable[[], T]) -> T:
    """Run a command body; our errors become exit 1 with a one-line reason.

    So do a full disk and a damaged file that a library failed to read (a truncated Parquet
    file, a garbled journal): the data dir is searched for the file to name. Anything else
    keeps its traceback (a bug to report).
    """
    try:
        return body()
    except GpuledgerError as exc:
        _fail(str(exc))
    except Exception as exc:
        reason = explain_failure(exc, _data_dir[0] if _data_dir else None)
        if reason is None:
            raise
        _fail(reason)


def _fail(reason: str) -> NoReturn:
    console.print(f"[bold red]error:[/] {reason}", highlight=False, soft_wrap=True)
    sys.exit(1)


def explain_failure(exc: BaseException, data_dir: Path | None) -> str | None:
    """A one-line reason for a failure that is not ours, or ``None`` for a bug."""
    if disk_full(exc):
        where = getattr(exc, "filename", None) or data_dir or "the data dir"
        return f"no space left on the device of {where}: free some space and run the command again"
    vendor = type(exc).__module__.split(".")[0] in ("pyarrow", "polars")
    if not (vendor or isinstance(exc, (OSError, ValueError))):
        return None
    damaged: list[str] = []
    if data_dir is not None and data_dir.is_dir():
        from storage.dataset import Store
        from storage.manifest import find_damaged

        damaged = find_damaged(Store(data_dir))
    if damaged:
        more = f" (and {len(damaged) - 1} more)" if len(damaged) > 1 else ""
        return (
            f"{damaged[0]}{more}; restore it from a backup, or move a batch journal entry aside and consume "
            "again (`gpuledger verify` lists sealed files that changed)"
        )
    if vendor or isinstance(exc, OSError):
        lines = str(exc).strip().splitlines()
        return f"{type(exc).__name__}: {lines[0] if lines else exc!r} (under {data_dir or 'the data dir'})"
    return None


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is ENOSPC, as Python or pyarrow reports it."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(current) or "Disk quota exceeded" in str(current):
            return True
        current = current.__cause__ or current.__context__
    return False
