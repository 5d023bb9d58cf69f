"""Options every command takes, and the one way a command turns them into settings.

Each command declares ``data_dir``, and ``registry`` and ``bus`` where it uses them, with these
annotated types, and calls :func:`settings_from` first thing. Errors that are ours (:class:`GpuledgerError`) end the
command with exit status 1 and a one-line reason on stderr (see :func:`run_command`).
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn, TypeVar

import typer
from rich.console import Console
from typer.core import TyperGroup

from gpuledger.settings import Settings, load_settings
from storage.errors import GpuledgerError

DataDirOpt = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Root of the datasets (default ./gpuledger-data).", show_default=False),
]
RegistryOpt = Annotated[
    Path | None,
    typer.Option("--registry", help="registry.toml (or registry = in gpuledger.toml, GPULEDGER_REGISTRY; no default).", show_default=False),
]
BusOpt = Annotated[
    Literal["local", "kafka"] | None,
    typer.Option("--bus", help="local (embedded, default) or kafka (GPULEDGER_KAFKA_BOOTSTRAP).", show_default=False),
]

console = Console(stderr=True)
out = Console()

T = TypeVar("T")


_data_dir: list[Path] = []  # the data dir of the running command, for error reports


def settings_from(data_dir: Path | None, registry: Path | None = None, bus: str | None = None) -> Settings:
    settings = load_settings(data_dir=data_dir, registry=registry, bus=bus)
    _data_dir[:] = [Path(settings.data_dir)]
    return settings


def run_command(body: Callable[[], T]) -> T:
    """Run a command body; our errors become exit 1 with a one-line reason.

    So do a full disk and a damaged file that a library failed to read (a truncated Parquet
    file, a garbled Delta log entry): the data dir is searched for the file to name. Anything else
    keeps its traceback (a bug to report).
    """
    try:
        return body()
    except GpuledgerError as exc:
        _fail(str(exc))
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in SERVER_MODULES:
            raise
        console.print(
            f"[bold red]error:[/] this command needs {exc.name}, which the slim (GPU node) install leaves out: "
            "pip install 'gpuledger\\[server]'",  # \\[: rich markup escape
            highlight=False, soft_wrap=True,
        )
        sys.exit(1)
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
            f"{damaged[0]}{more}; restore it from a backup (a Delta log entry: the table's _delta_log) and run the "
            "command again (`gpuledger verify` lists sealed files that changed)"
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


# What the `server` extra of pyproject.toml adds to the slim install a GPU node gets.
SERVER_MODULES = frozenset(
    {"polars", "polars_hash", "pyarrow", "apscheduler", "sqlalchemy", "cryptography", "xlsxwriter",
     "matplotlib", "koreanize_matplotlib", "deltalake", "numpy", "jinja2", "fpdf", "msgspec"}
)
# import name → distribution name, where they differ (the `fpdf` module comes from `fpdf2`)
SERVER_DISTRIBUTIONS = {"fpdf": "fpdf2"}


def _quiet(param: Any) -> Any:
    if param is not None and getattr(param, "is_flag", False) and param.metavar is None:
        param.metavar = ""
    return param


def quiet_flags(command: Any) -> None:
    """On/off flags take no value: show none (typer prints ``<bool>`` beside them otherwise).

    ``--help`` is made on demand by ``get_help_option``, so that method is wrapped as well.
    """
    for param in command.params:
        _quiet(param)
    if not getattr(command, "_gpuledger_quiet", False):
        made = command.get_help_option
        command.get_help_option = lambda ctx: _quiet(made(ctx))
        command._gpuledger_quiet = True
    for sub in getattr(command, "commands", {}).values():
        quiet_flags(sub)


class QuietFlagsGroup(TyperGroup):
    """The root group of the ``gpuledger`` app: help screens without a value column on flags."""

    def get_params(self, ctx: Any) -> list[Any]:
        return [_quiet(param) for param in super().get_params(ctx)]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            quiet_flags(command)
        return command


def store_of(settings):  # noqa: ANN001, ANN201 - imported on use: Polars/pyarrow are server-only
    """The settings' data directory as a Store (local, or s3:// with [storage] / AWS_*)."""
    from gpuledger.wiring import make_store

    return make_store(settings)
