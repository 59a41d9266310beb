"""Stage 3: DuckDB views over RESULTS, query, report, plots and calibrate (simulated vs a real
capture). May import every earlier stage (ingest, replay) and model; nothing imports it."""
