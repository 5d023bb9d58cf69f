"""``gpuledger offsets``: where the stream consumer resumes, as storage records it.

Storage's offsets are the truth (docs/architecture.md, "Storage and exactly-once"): a stored
offset the bus's log does not reach stops that partition. ``offsets rebase`` is the one
deliberate way on, recorded in the tables' history.
"""

from __future__ import annotations

import getpass
from typing import Annotated

import typer

from gpuledger.cli_common import DataDirOpt, RegistryOpt, out, run_command, settings_from

offsets_app = typer.Typer(help="Where the stream consumer resumes, as storage records it.", no_args_is_help=True)


@offsets_app.command("rebase")
def rebase(
    topic: Annotated[str, typer.Option("--topic", help="The topic, e.g. gpu.usage.v1.")],
    partition: Annotated[int, typer.Option("--partition", min=0, help="The partition (0 on the local bus).")],
    to: Annotated[int, typer.Option("--to", min=0, help="The first offset to read from now on.")],
    reason: Annotated[str, typer.Option("--reason", help="Why (kept in the tables' history with your user name).")],
    data_dir: DataDirOpt = None,
    registry: RegistryOpt = None,
    group: Annotated[str | None, typer.Option("--group", help="Consumer group (default: [kafka] consumer_group).", show_default=False)] = None,
) -> None:
    """Re-base a partition deliberately: the consumer resumes it at --to (after a topic was
    re-created or its offsets restarted). One commit to quarantine and raw each, whose
    commitInfo names who, why, and the offsets before and after."""

    def body() -> None:
        from gpuledger.wiring import make_store
        from streams.checkpoint import rebase as rebase_offsets

        settings = settings_from(data_dir, registry)
        the_group = group or settings.kafka.consumer_group
        stream = f"{the_group}/{topic}/{partition}"
        before = rebase_offsets(make_store(settings), stream, to, operator=getpass.getuser(), reason=reason)
        out.print(
            f"offsets rebase {stream}: raw held up to offset {before['raw']}, quarantine up to {before['quarantine']}; "
            f"the consumer now resumes at offset {to} (recorded in both tables' history)"
        )

    run_command(body)


def register(app: typer.Typer) -> None:
    app.add_typer(offsets_app, name="offsets")
