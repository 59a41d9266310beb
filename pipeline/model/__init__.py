"""The floor every stage stands on: the VM description (vmmodel), the hosting facts of a VM's
process and host (hosting), the kernel's NUMA-balancing knobs (knobs), the fleet layout (fleet).
Imports only errors and schema; no stage may be imported from here."""
