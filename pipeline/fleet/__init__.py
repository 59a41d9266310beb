"""Fleets: many hosts ' captures, ingested and replayed apart, on Dask or in one process."""
