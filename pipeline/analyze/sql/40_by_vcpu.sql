-- Area: by_vcpu. Who paid: each vCPU thread's faults, the shootdown IPIs it received, and
-- the scanner work it ran, from the `vcpu_epochs` results table.

-- Totals per policy, VM and vCPU over the whole run (per point of a sweep).
CREATE VIEW by_vcpu (
    point,                   -- sweep grid point; a plain replay shows no point
    policy,                  -- policy name
    vm,                      -- VM name
    vcpu,                    -- vCPU index
    epochs,                  -- epochs with any non-zero counter for this vCPU [epochs]
    ept_violations,          -- refaults on zapped SPTEs taken by this vCPU [faults]
    numa_hint_faults,        -- NUMA hinting faults taken by this vCPU thread [faults]
    numa_hint_faults_local,  -- of which on a page already local [faults]
    numa_pages_migrated,     -- pages migrated by this vCPU's faults [pages]
    numa_migrate_failed,     -- pages whose migration failed in this vCPU's faults [pages]
    shootdown_ipis,          -- remote-flush IPIs this vCPU received in guest mode [ipis]
    task_numa_work_runs,     -- task_numa_work scans this vCPU thread ran [runs]
    spte_faultins,           -- first fault-ins of SPTEs (not NUMA-balancing refaults) [faults]
    scan_period_ms_last,     -- the thread's numa_scan_period at its last row [ms]
    scan_period_ms_max       -- the largest numa_scan_period it reached [ms]
) AS
SELECT
    point,
    policy,
    vm,
    vcpu,
    count(*),
    sum(ept_violations)::BIGINT,
    sum(numa_hint_faults)::BIGINT,
    sum(numa_hint_faults_local)::BIGINT,
    sum(numa_pages_migrated)::BIGINT,
    sum(numa_migrate_failed)::BIGINT,
    sum(shootdown_ipis)::BIGINT,
    sum(task_numa_work_runs)::BIGINT,
    sum(spte_faultins)::BIGINT,
    arg_max(scan_period_ms, epoch)::BIGINT,
    max(scan_period_ms)::BIGINT
FROM vcpu_epochs
GROUP BY point, policy, vm, vcpu;
