"""Stage 1: kernel traces -> DATASET: ftrace text and trace.dat (grammar, C scanner, reader),
derived accesses, and the hosting facts a capture's files carry. May import model, schema,
errors, clikit; never synth, lab, replay, sweep or analyze."""
