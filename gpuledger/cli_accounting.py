"""Accounting commands: ``close --month YYYY-MM``, ``sign --month`` and ``registry check FILE``.

Thin: parse, build settings, call :mod:`accounting`, print. The summary table is the one the
demo prints (``gpuledger.summary``), read back from the written ledgers. Library imports sit
inside the commands so that loading the CLI for another command stays light.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gpuledger.cli_common import DataDirOpt, RegistryOpt, console, out, run_command, settings_from, store_of

CLOSE_WAIT_S = 120  # how long `close` waits for a running upkeep to give the lease back
registry_app = typer.Typer(help="Check the registry (entities, allocations, projects, rate cards).", no_args_is_help=True)


def close(
    month: Annotated[str, typer.Option("--month", help="KST calendar month to close, YYYY-MM.")],
    data_dir: DataDirOpt = None,
    registry: RegistryOpt = None,
    signing_key: Annotated[
        Path | None,
        typer.Option("--signing-key", help="Ed25519 private key (PEM) to sign the period's manifest."),
    ] = None,
    early: Annotated[
        bool,
        typer.Option("--early", help="Close a month that has not ended yet in Korea (usage after now becomes next month's corrections)."),
    ] = False,
    allow_empty: Annotated[
        bool,
        typer.Option("--allow-empty", help="Close a month that has no usage at all (seals an all-zero month)."),
    ] = False,
) -> None:
    """Close a KST month: write the billing and compliance ledgers, seal them, print a summary.

    Closing a month that is closed already changes nothing and says so; late usage is billed as corrections by the next close.
    A month with no usage is refused (a wrong --data-dir would seal an all-zero month for good) unless --allow-empty.
    """

    def body() -> None:
        # Imported here: the close pulls in Polars/pyarrow, which other commands (collect) do not need.
        from accounting.close import close_month
        from accounting.registry import load_registry
        from gpuledger.summary import print_close_summary
        from storage.lease import hold
        from storage.rollup import roll_up

        _refuse_unfinished(month, early)
        settings = settings_from(data_dir, registry)
        reg = load_registry(settings.registry_file())
        store = store_of(settings)
        with console.status(f"closing {month}") as status:
            status.update(f"{month}: taking the store's upkeep lease (an hourly upkeep may be running)")
            # the one lease of close and upkeep: nothing rolls up, compacts or vacuums meanwhile
            with hold(store, "gpuledger close", wait_s=CLOSE_WAIT_S) as lease:
                status.update(f"{month}: rolling usage_hourly up from raw")
                roll_up(store, lease=lease)  # the close then bills exactly the usage it seals
                _refuse_empty(store, month, allow_empty)
                result = close_month(
                    store, reg, month, signing_key=signing_key, lease=lease,
                    progress=lambda msg: status.update(f"{month}: {msg}"),
                )
        console.print(result.message)
        print_close_summary(store, month, result, registry=reg)
        if signing_key is not None and result.already_closed and not result.sealed:
            _say_how_to_sign(store, month, signing_key)

    run_command(body)


def _refuse_empty(store, month: str, allow_empty: bool) -> None:
    """A close over no usage at all is almost always a wrong ``--data-dir``: refuse unless asked for.

    A month closed already passes (the close then changes nothing and says so).
    """
    from accounting.close import closed_periods
    from accounting.errors import CloseError
    from accounting.usage import usage_periods

    if allow_empty or month in closed_periods(store) or month in usage_periods(store):
        return
    raise CloseError(
        f"{store.root} holds no usage for {month}: closing would seal an all-zero month for good. "
        "Check --data-dir (and that `gpuledger consume` ran), or pass --allow-empty to close it anyway."
    )


def _say_how_to_sign(store, month: str, signing_key: Path) -> None:
    """``close --signing-key`` on a month sealed earlier writes no signature: say so, and how to sign it."""
    from storage.manifest import SIGNATURE_SUFFIX, manifest_path

    if store.exists(manifest_path(store, month) + SIGNATURE_SUFFIX):
        console.print(f"{month}: its manifest is signed already (signature unchanged)", markup=False, highlight=False)
        return
    from accounting.errors import CloseError

    raise CloseError(
        f"{month} was sealed before without a signature and a close never rewrites it: "
        f"sign the existing manifest with `gpuledger sign --month {month} --signing-key {signing_key}`"
    )


def sign(
    month: Annotated[str, typer.Option("--month", help="KST month whose sealed manifest to sign, YYYY-MM.")],
    signing_key: Annotated[Path, typer.Option("--signing-key", help="Ed25519 private key (PEM).")],
    data_dir: DataDirOpt = None,
    registry: RegistryOpt = None,
) -> None:
    """Sign the manifest of a month sealed already (writes YYYY-MM.json.sig beside it).

    The data directory is verified first: a manifest that does not match its files is never signed.
    """

    def body() -> None:
        from storage.errors import IntegrityError
        from storage.manifest import SIGNATURE_SUFFIX, load_private_key, manifest_path, verify

        settings = settings_from(data_dir, registry)
        store = store_of(settings)
        target = manifest_path(store, month)
        if not store.exists(target):
            raise IntegrityError(f"{month} has no manifest under {store.root}: close it first (`gpuledger close --month {month}`)")
        report = verify(store)
        wrong = [d for d in report.differences if d.period == month]
        if wrong:
            raise IntegrityError(
                f"{month} does not verify ({len(wrong)} difference(s), first: {wrong[0]}); run `gpuledger verify`, nothing signed"
            )
        store.write_bytes_atomic(target + SIGNATURE_SUFFIX, load_private_key(signing_key).sign(store.read_bytes(target)))
        out.print(f"signed {target}{SIGNATURE_SUFFIX}", markup=False, highlight=False)

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
    on: Annotated[
        str | None,
        typer.Option("--on", help="KST day whose allocations in force are counted, YYYY-MM-DD (default: today in Korea).", show_default=False),
    ] = None,
) -> None:
    """Validate a registry file; exit 1 listing every problem found.

    The GPU count is of the allocation tranches in force on one day; expired and future ones are counted apart.
    """

    def body() -> None:
        from datetime import UTC, date, datetime

        from accounting.errors import RegistryError
        from accounting.registry import load_registry
        from accounting.usage import KST_OFFSET
        from storage.errors import GpuledgerError

        try:
            day = date.fromisoformat(on) if on else (datetime.now(UTC) + KST_OFFSET).date()
        except ValueError:
            raise GpuledgerError(f"--on {on!r}: expected a day YYYY-MM-DD") from None

        try:
            reg = load_registry(file)
        except RegistryError as exc:
            console.print(f"{exc.source}: {len(exc.problems)} problem(s)", markup=False, highlight=False)
            for problem in exc.problems:
                console.print(f"  - {problem}", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        rows = [a for e in reg.entities.values() for a in e.allocations]
        in_force = [a for a in rows if a.period.contains(day)]
        others = len(rows) - len(in_force)
        out.print(
            f"{file}: ok — {len(reg.entities)} entities, {len(reg.projects)} projects, "
            f"{len(reg.rates)} rate cards, {sum(a.count for a in in_force):,} GPUs allocated in force on {day} "
            f"({len(in_force)} tranche(s); {others} other tranche(s) expired or not yet in force), rounding {reg.rounding}",
            markup=False,
            highlight=False,
        )

    run_command(body)


def register(app: typer.Typer) -> None:
    """Add ``close``, ``sign`` and ``registry check`` to the main app."""
    app.command(name="close")(close)
    app.command(name="sign")(sign)
    registry_app.command(name="check")(check)
    app.add_typer(registry_app, name="registry")
