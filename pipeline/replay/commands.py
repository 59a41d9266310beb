"""CLI commands of stage 2 (the engine): replay, policies, sweep."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the root app."""
