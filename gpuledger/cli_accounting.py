"""Placeholder: commands of this module are registered by the room that owns them."""

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to the main app."""
