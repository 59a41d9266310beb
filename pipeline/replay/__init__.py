"""Stage 2: the epoch engine (scanner, change_prot_numa, KVM notifier, faults) and the policies:
DATASET -> RESULTS. May import model, schema, errors, clikit; never another stage."""
