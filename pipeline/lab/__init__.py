"""The live kernel: `tlbreplay capture` of a running VMM, and the lab's tiny KVM VMM and guest
(memory, pinning, probes, tracefs and sysctl control) that produce real captures for ingest.
May import model, schema, errors, clikit; never a later stage."""
