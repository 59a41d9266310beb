-- Area: timeline. The run epoch by epoch: what KVM and the host did, and what the
-- NUMA-balancing scanner (task_numa_work) walked.

-- Epoch length of the run and of its dataset, from the RESULTS manifest; in a sweep the
-- grid's epoch_ms key, where it is set, gives the point's engine epoch.
CREATE VIEW _timeline_epoch_ms AS
SELECT
    p.point,
    p.epoch_ms,
    coalesce(
        CAST(manifest ->> 'dataset_epoch_ms' AS BIGINT),
        CAST(manifest ->> 'epoch_ms' AS BIGINT),
        100
    ) AS dataset_epoch_ms
FROM _run_points AS p, results_manifest;

-- Every epoch from 0 to the last one the run reaches for the VM, per point and policy: the
-- last epoch of any results table of the same setting (a plain replay: of the run) or of the
-- dataset's accesses (re-binned to the point's epoch), so a trace whose end is quiet still
-- shows its whole length.
CREATE VIEW _timeline_grid AS
SELECT r.point, r.policy, r.vm, e.epoch
FROM _runs AS r
JOIN (
    SELECT p.setting, x.vm, max(x.epoch) AS last_epoch
    FROM (
        SELECT point, vm, epoch FROM epochs
        UNION ALL SELECT point, vm, epoch FROM vcpu_epochs
        UNION ALL SELECT point, vm, epoch FROM scans
        UNION ALL
        SELECT m.point, a.vm, max(a.epoch) * any_value(m.dataset_epoch_ms) // m.epoch_ms
        FROM accesses AS a, _timeline_epoch_ms AS m
        GROUP BY m.point, m.epoch_ms, a.vm
    ) AS x
    JOIN _run_points AS p USING (point)
    GROUP BY p.setting, x.vm
) AS l USING (setting, vm)
CROSS JOIN LATERAL (SELECT unnest(range(0, l.last_epoch + 1)) AS epoch) AS e;

-- Scanner passes summed per epoch.
CREATE VIEW _timeline_scans AS
SELECT
    point,
    policy,
    vm,
    epoch,
    count(*) AS scans,
    sum(chunks) AS scan_chunks,
    sum(notifiers) AS scan_notifiers,
    sum(nr_pte_updates) AS scan_pte_updates,
    sum(virt_pages) AS scan_virt_pages
FROM scans
GROUP BY point, policy, vm, epoch;

-- Epoch counters, all page sizes together.
CREATE VIEW _timeline_epochs AS
SELECT
    point,
    policy,
    vm,
    epoch,
    sum(remote_tlb_flushes) AS remote_tlb_flushes,
    sum(shootdown_ipis) AS shootdown_ipis,
    sum(mmu_notifier_invalidations) AS mmu_notifier_invalidations,
    sum(kvm_unmap_gfn_range_calls) AS kvm_unmap_gfn_range_calls,
    sum(spte_zapped) AS spte_zapped,
    sum(ept_violations) AS ept_violations,
    sum(numa_hint_faults) AS numa_hint_faults,
    sum(numa_pages_migrated) AS numa_pages_migrated,
    sum(host_tlb_flushes) AS host_tlb_flushes,
    fsum(cost_us) AS cost_us
FROM epochs
GROUP BY point, policy, vm, epoch;

-- One row per policy, VM and epoch, every epoch of the run (zeros where nothing happened);
-- per point of a sweep.
CREATE VIEW timeline (
    point,                       -- sweep grid point; a plain replay shows no point
    policy,                      -- policy name
    vm,                          -- VM name
    epoch,                       -- epoch index
    t_ms,                        -- start of the epoch from the start of the trace [ms]
    remote_tlb_flushes,          -- the VM's TLB shootdowns [flushes]
    shootdown_ipis,              -- IPIs KVM sent for them [ipis]
    mmu_notifier_invalidations,  -- invalidate_range_start calls reaching KVM [calls]
    kvm_unmap_gfn_range_calls,   -- zap requests KVM executed [calls]
    spte_zapped,                 -- leaf SPTEs zapped, all levels [sptes]
    ept_violations,              -- guest refaults on zapped SPTEs [faults]
    numa_hint_faults,            -- NUMA hinting faults [faults]
    numa_pages_migrated,         -- base pages migrated [pages]
    host_tlb_flushes,            -- primary-MMU flushes [flushes]
    cost_us,                     -- modelled CPU time [us]
    scans,                       -- task_numa_work passes that walked memory [runs]
    scan_chunks,                 -- change_prot_numa calls of those passes [calls]
    scan_notifiers,              -- invalidate_range_start calls sent by the scanner [calls]
    scan_pte_updates,            -- base pages the scanner made PROT_NONE [pages]
    scan_virt_pages              -- 4 KiB pages of address space walked [pages]
) AS
SELECT
    g.point,
    g.policy,
    g.vm,
    g.epoch,
    g.epoch * m.epoch_ms,
    coalesce(e.remote_tlb_flushes, 0)::BIGINT,
    coalesce(e.shootdown_ipis, 0)::BIGINT,
    coalesce(e.mmu_notifier_invalidations, 0)::BIGINT,
    coalesce(e.kvm_unmap_gfn_range_calls, 0)::BIGINT,
    coalesce(e.spte_zapped, 0)::BIGINT,
    coalesce(e.ept_violations, 0)::BIGINT,
    coalesce(e.numa_hint_faults, 0)::BIGINT,
    coalesce(e.numa_pages_migrated, 0)::BIGINT,
    coalesce(e.host_tlb_flushes, 0)::BIGINT,
    coalesce(e.cost_us, 0)::DOUBLE,
    coalesce(s.scans, 0)::BIGINT,
    coalesce(s.scan_chunks, 0)::BIGINT,
    coalesce(s.scan_notifiers, 0)::BIGINT,
    coalesce(s.scan_pte_updates, 0)::BIGINT,
    coalesce(s.scan_virt_pages, 0)::BIGINT
FROM _timeline_grid AS g
JOIN _timeline_epoch_ms AS m USING (point)
LEFT JOIN _timeline_epochs AS e USING (point, policy, vm, epoch)
LEFT JOIN _timeline_scans AS s USING (point, policy, vm, epoch);
