"""The floor every stage stands on: the VM description (vmmodel, over the strict TOML reader
tomlsource), the hosting facts of a VM's process and host (hosting), a fleet's hosts (fleet),
the kernel's NUMA-balancing knobs (knobs), the engine's memory per guest page and
`--max-memory` (memory). Imports only the base modules; no stage."""
