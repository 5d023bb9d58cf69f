"""Every command has help and is in the README (sqlite-utils' habit)."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from gpuledger.cli import app

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]


def commands() -> list[tuple[str, ...]]:
    root = typer.main.get_command(app)
    found = []

    def walk(group, prefix: tuple[str, ...]) -> None:
        for name, command in group.commands.items():
            if getattr(command, "commands", None):
                walk(command, (*prefix, name))
            else:
                found.append((*prefix, name))

    walk(root, ())
    return sorted(found)


def test_the_main_commands_exist() -> None:
    names = {c[0] for c in commands()}
    assert {"demo", "collect", "consume", "ingest", "close", "schedule", "report", "export", "verify"} <= names


@pytest.mark.parametrize("command", commands(), ids=" ".join)
def test_every_command_has_help_and_is_in_the_readme(command: tuple[str, ...]) -> None:
    result = CliRunner().invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output
    assert f"gpuledger {' '.join(command)}" in (REPO / "README.md").read_text() or (
        len(command) == 2 and f"{command[0]} {command[1]}" in (REPO / "README.md").read_text()
    )


# Only the commands that talk to the bus take --bus (an option a command accepts and ignores
# tells the user something false). `health` reads the consumer's heartbeat and nothing else.
USES_BUS = {("demo",), ("collect",), ("ingest",), ("consume",)}
NO_REGISTRY = {("health",), ("storage", "owner"), ("storage", "add-group"), ("storage", "record-loss"), ("storage", "losses")}


@pytest.mark.parametrize("command", [c for c in commands() if c[0] != "keys" and c[0] != "registry"], ids=" ".join)
def test_every_data_command_takes_the_options_it_uses_and_no_other(command: tuple[str, ...]) -> None:
    result = CliRunner().invoke(app, [*command, "--help"], terminal_width=200)
    assert "--data-dir" in result.output, f"{' '.join(command)} lacks --data-dir"
    assert ("--bus" in result.output) == (command in USES_BUS), f"{' '.join(command)}: --bus"
    assert ("--registry" in result.output) == (command not in NO_REGISTRY), f"{' '.join(command)}: --registry"
