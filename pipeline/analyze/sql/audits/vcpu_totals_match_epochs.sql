-- Audit: the per-vCPU results add up to the per-VM results. Every EPT violation, hinting
-- fault, migrated page and shootdown IPI is taken or received by exactly one vCPU thread,
-- so vcpu_epochs summed over vCPUs equals epochs summed over page sizes, per policy and VM.
-- Returns: one row per (point, policy, vm, counter) whose two totals differ.
WITH v AS (
    UNPIVOT (
        SELECT point, policy, vm,
            sum(ept_violations) AS ept_violations,
            sum(numa_hint_faults) AS numa_hint_faults,
            sum(numa_pages_migrated) AS numa_pages_migrated,
            sum(shootdown_ipis) AS shootdown_ipis
        FROM vcpu_epochs
        GROUP BY point, policy, vm
    )
    ON ept_violations, numa_hint_faults, numa_pages_migrated, shootdown_ipis
    INTO NAME counter VALUE by_vcpu
),
e AS (
    UNPIVOT (
        SELECT point, policy, vm, ept_violations, numa_hint_faults, numa_pages_migrated,
            shootdown_ipis
        FROM shootdowns_by_vm
    )
    ON ept_violations, numa_hint_faults, numa_pages_migrated, shootdown_ipis
    INTO NAME counter VALUE by_vm
)
SELECT e.point, e.policy, e.vm, e.counter, e.by_vm, coalesce(v.by_vcpu, 0) AS by_vcpu
FROM e
LEFT JOIN v USING (point, policy, vm, counter)
WHERE e.by_vm <> coalesce(v.by_vcpu, 0)
ORDER BY e.point, e.policy, e.vm, e.counter
