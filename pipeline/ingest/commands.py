"""CLI commands of stage 1 (to Parquet): ingest, synth, capture, lab."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the root app."""
