-- Audit: per-epoch counters respect the bounds their definitions imply (DESIGN.md counters,
-- KERNEL.md 8.5): no counter is negative; local hinting faults are a subset of hinting
-- faults; each PMD made PROT_NONE adds 512 base pages to numa_pte_updates; KVM sends at most
-- one IPI per vCPU per remote flush; the modelled cost is a finite non-negative number.
-- Returns: one row per (point, policy, vm, epoch, broken rule); point is that of a sweep.
WITH e AS (
    SELECT
        e.point,
        e.policy,
        e.vm,
        e.epoch,
        min(least(
            e.numa_pte_updates, e.numa_huge_pte_updates, e.numa_hint_faults,
            e.numa_hint_faults_local, e.numa_pages_migrated, e.numa_migrate_failed,
            e.mmu_notifier_invalidations, e.notifier_bytes, e.kvm_unmap_gfn_range_calls,
            e.spte_zapped, e.remote_tlb_flushes, e.shootdown_ipis, e.host_tlb_flushes,
            e.host_tlb_flush_ipis, e.ept_violations
        )) AS min_counter,
        sum(e.numa_hint_faults) AS numa_hint_faults,
        sum(e.numa_hint_faults_local) AS numa_hint_faults_local,
        sum(e.numa_pte_updates) AS numa_pte_updates,
        sum(e.numa_huge_pte_updates) AS numa_huge_pte_updates,
        sum(e.remote_tlb_flushes) AS remote_tlb_flushes,
        sum(e.shootdown_ipis) AS shootdown_ipis,
        min(e.cost_us) AS min_cost_us,
        bool_or(NOT isfinite(e.cost_us)) AS cost_not_finite
    FROM epochs AS e
    GROUP BY e.point, e.policy, e.vm, e.epoch
)
SELECT e.point, e.policy, e.vm, e.epoch, rule
FROM e
LEFT JOIN vms AS v USING (vm),
LATERAL (
    SELECT unnest([
        CASE WHEN e.min_counter < 0 THEN 'a counter is negative' END,
        CASE WHEN e.numa_hint_faults_local > e.numa_hint_faults
            THEN 'numa_hint_faults_local > numa_hint_faults' END,
        CASE WHEN e.numa_huge_pte_updates * 512 > e.numa_pte_updates
            THEN 'numa_huge_pte_updates * 512 > numa_pte_updates' END,
        CASE WHEN v.vcpus IS NOT NULL AND e.shootdown_ipis > e.remote_tlb_flushes * v.vcpus
            THEN 'shootdown_ipis > remote_tlb_flushes * vcpus' END,
        CASE WHEN e.min_cost_us < 0 OR e.cost_not_finite
            THEN 'cost_us negative or not finite' END
    ]) AS rule
) AS r
WHERE rule IS NOT NULL
ORDER BY e.point, e.policy, e.vm, e.epoch, rule
