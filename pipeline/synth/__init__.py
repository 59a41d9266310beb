"""Stage 1 (synthetic): workload specs -> DATASET (spec parsing, the access generator, the
work bound, the runner and its command). May import model, schema, errors, clikit."""
