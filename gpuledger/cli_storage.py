"""Store upkeep an operator does on purpose: ``storage owner``, ``storage add-group``,
``storage record-loss``, ``storage losses``. Thin: parse, call :mod:`storage`, print."""

from __future__ import annotations

from typing import Annotated

import typer

from gpuledger.cli_common import DataDirOpt, out, run_command, settings_from, store_of

storage_app = typer.Typer(help="Who writes a data dir, and losses recorded on purpose.", no_args_is_help=True)


@storage_app.command("owner")
def owner(data_dir: DataDirOpt = None) -> None:
    """Show the consumer group(s) and topic that write this data dir, and the record's history."""

    def body() -> None:
        from storage.owner import read_owner

        store = store_of(settings_from(data_dir))
        found = read_owner(store)
        if found is None:
            out.print(f"{store.display_root}: no owner yet (the first consumer that starts claims it)", markup=False)
            return
        out.print(f"{store.display_root}: topic {found.topic}, group(s) {', '.join(found.groups)}", markup=False, soft_wrap=True)
        for h in found.history:
            why = f" — {h['reason']}" if h.get("reason") else ""
            out.print(f"  {h['at']} {h['event']}: {h['group']} by {h['by']}{why}", markup=False, soft_wrap=True)

    run_command(body)


@storage_app.command("add-group")
def add_group(
    group: Annotated[str, typer.Argument(help="The consumer group to let write this data dir.")],
    reason: Annotated[str, typer.Option("--reason", help="Why (kept in the owner record).")],
    data_dir: DataDirOpt = None,
) -> None:
    """Let another consumer group write this data dir on purpose (a renamed group). Stop the old
    group first: two groups running at once each store every event."""

    def body() -> None:
        from storage.owner import add_group as add

        settings = settings_from(data_dir)
        store = store_of(settings)
        found = add(store, group, reason, topic=settings.kafka.usage_topic)
        out.print(f"{store.display_root}: group(s) {', '.join(found.groups)} of topic {found.topic}", markup=False, soft_wrap=True)

    run_command(body)


@storage_app.command("record-loss")
def record_loss(
    file: Annotated[str, typer.Option("--file", help="The lost file as <table>/<path>, as the error line names it.")],
    reason: Annotated[str, typer.Option("--reason", help="What happened and why no backup exists (kept in the record).")],
    data_dir: DataDirOpt = None,
) -> None:
    """Record a table file that is gone (or damaged) and has no backup: a loss record (what, how
    many rows, which hours, who, why) and a Delta remove, so work can go on and the loss shows."""

    def body() -> None:
        from storage.lease import hold
        from storage.losses import record_loss as record

        store = store_of(settings_from(data_dir))
        with hold(store, "gpuledger storage record-loss", wait_s=120) as lease:  # no close or upkeep meanwhile
            r = record(store, file, reason, lease=lease)
        out.print(
            f"recorded loss of {r['table']}/{r['file']}: {r['rows']} rows of {r['first_interval_start']} to "
            f"{r['last_interval_start']} (period {r['period']}), removed in version {r['removed_in_version']}; "
            f"record in losses/{r['table']}/",
            markup=False, soft_wrap=True,
        )

    run_command(body)


@storage_app.command("losses")
def list_losses(
    data_dir: DataDirOpt = None,
    month: Annotated[str | None, typer.Option("--month", help="Only this KST month (YYYY-MM).")] = None,
) -> None:
    """List the recorded losses (of one month): file, rows, hours, who and why."""

    def body() -> None:
        from storage.losses import losses

        found = losses(store_of(settings_from(data_dir)), month)
        if not found:
            out.print("no losses recorded" + (f" for {month}" if month else ""), markup=False)
        for r in found:
            out.print(
                f"{r['period']} {r['table']}/{r['file']}: {r['rows']} rows lost, {r['first_interval_start']} to "
                f"{r['last_interval_start']}; recorded {r['recorded_at']} by {r['recorded_by']}: {r['reason']}",
                markup=False, soft_wrap=True,
            )

    run_command(body)


def register(app: typer.Typer) -> None:
    app.add_typer(storage_app, name="storage")
