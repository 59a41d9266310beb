"""CLI commands of stage 3 (DuckDB): query, report, calibrate."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the root app."""
