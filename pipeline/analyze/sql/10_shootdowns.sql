-- Area: shootdowns. What each policy costs each VM over the whole run, from the `epochs`
-- results table (counters named as in DESIGN.md and schemas/epochs.toml).

-- Every counter of the run summed per policy, VM and page size (the SPTE level for
-- spte_zapped, the region's mapping size for range-level events). The headline table.
CREATE VIEW shootdowns (
    point,                       -- sweep grid point (points.point); a plain replay shows no point
    policy,                      -- policy name (tlbreplay policies)
    vm,                          -- VM name, joins vms.vm
    page_size,                   -- SPTE level or region mapping size: 4K, 2M or 1G
    epochs,                      -- epochs with any non-zero counter [epochs]
    numa_pte_updates,            -- base pages made PROT_NONE by change_prot_numa [pages]
    numa_huge_pte_updates,       -- PMDs made PROT_NONE [pmds]
    numa_hint_faults,            -- NUMA hinting faults, as /proc/vmstat [faults]
    numa_hint_faults_local,      -- hinting faults on a page already local [faults]
    numa_pages_migrated,         -- base pages migrated by NUMA balancing [pages]
    numa_migrate_failed,         -- base pages whose misplaced migration failed, e.g. pinned [pages]
    mmu_notifier_invalidations,  -- invalidate_range_start calls reaching KVM (kvm_unmap_hva_range) [calls]
    notifier_bytes,              -- bytes covered by those invalidations [bytes]
    kvm_unmap_gfn_range_calls,   -- zap requests KVM executes, incl. RFC v2 numa_protect [calls]
    spte_zapped,                 -- present leaf SPTEs zapped at this page size [sptes]
    remote_tlb_flushes,          -- kvm_flush_remote_tlbs calls: the VM's TLB shootdowns [flushes]
    shootdown_ipis,              -- remote flushes x vCPUs in guest mode (IPIs KVM sends) [ipis]
    host_tlb_flushes,            -- primary-MMU flush_tlb_mm_range calls [flushes]
    host_tlb_flush_ipis,         -- IPIs of those host flushes [ipis]
    ept_violations,              -- guest refaults on zapped SPTEs [faults]
    cost_us                      -- modelled CPU time of the above (engine cost model) [us]
) AS
SELECT
    g.point,
    g.policy,
    g.vm,
    g.page_size,
    count(e.epoch),
    coalesce(sum(numa_pte_updates), 0)::BIGINT,
    coalesce(sum(numa_huge_pte_updates), 0)::BIGINT,
    coalesce(sum(numa_hint_faults), 0)::BIGINT,
    coalesce(sum(numa_hint_faults_local), 0)::BIGINT,
    coalesce(sum(numa_pages_migrated), 0)::BIGINT,
    coalesce(sum(numa_migrate_failed), 0)::BIGINT,
    coalesce(sum(mmu_notifier_invalidations), 0)::BIGINT,
    coalesce(sum(notifier_bytes), 0)::BIGINT,
    coalesce(sum(kvm_unmap_gfn_range_calls), 0)::BIGINT,
    coalesce(sum(spte_zapped), 0)::BIGINT,
    coalesce(sum(remote_tlb_flushes), 0)::BIGINT,
    coalesce(sum(shootdown_ipis), 0)::BIGINT,
    coalesce(sum(host_tlb_flushes), 0)::BIGINT,
    coalesce(sum(host_tlb_flush_ipis), 0)::BIGINT,
    coalesce(sum(ept_violations), 0)::BIGINT,
    -- fsum (here and over cost_us below): the same total whatever the plan's row order
    coalesce(fsum(cost_us), 0)::DOUBLE
FROM _run_page_sizes AS g
LEFT JOIN epochs AS e USING (point, policy, vm, page_size)
GROUP BY g.point, g.policy, g.vm, g.page_size;

-- The same totals per policy and VM, all page sizes together (every pair replayed, zeros
-- when the policy did nothing to the VM).
CREATE VIEW shootdowns_by_vm (
    point,                       -- sweep grid point; a plain replay shows no point
    policy,                      -- policy name
    vm,                          -- VM name
    numa_pte_updates,            -- base pages made PROT_NONE [pages]
    numa_huge_pte_updates,       -- PMDs made PROT_NONE [pmds]
    numa_hint_faults,            -- NUMA hinting faults [faults]
    numa_hint_faults_local,      -- hinting faults on a page already local [faults]
    numa_pages_migrated,         -- base pages migrated [pages]
    numa_migrate_failed,         -- base pages whose migration failed [pages]
    mmu_notifier_invalidations,  -- invalidate_range_start calls reaching KVM [calls]
    notifier_bytes,              -- bytes covered by those invalidations [bytes]
    kvm_unmap_gfn_range_calls,   -- zap requests KVM executes [calls]
    spte_zapped,                 -- leaf SPTEs zapped, all levels [sptes]
    remote_tlb_flushes,          -- the VM's TLB shootdowns [flushes]
    shootdown_ipis,              -- IPIs KVM sent for them [ipis]
    host_tlb_flushes,            -- primary-MMU flushes [flushes]
    host_tlb_flush_ipis,         -- IPIs of the host flushes [ipis]
    ept_violations,              -- guest refaults on zapped SPTEs [faults]
    cost_us                      -- modelled CPU time [us]
) AS
SELECT
    point,
    policy,
    vm,
    -- the counters of `shootdowns`, in its column order, cost_us last
    CAST(coalesce(sum(COLUMNS(* EXCLUDE (point, policy, vm, page_size, epochs, cost_us))), 0)
        AS BIGINT),
    CAST(coalesce(fsum(cost_us), 0) AS DOUBLE)
FROM (
    SELECT * FROM shootdowns
    UNION ALL BY NAME
    SELECT point, policy, vm FROM _runs
)
GROUP BY point, policy, vm;
