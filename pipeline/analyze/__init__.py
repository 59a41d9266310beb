"""Stage: analyze."""
