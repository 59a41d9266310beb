"""Stage: replay."""
