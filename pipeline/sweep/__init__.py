"""Orchestration: parameter grids over replay, fanned out on Dask -> RESULTS keyed by grid
point. May import model, synth, replay, schema, errors, clikit."""
