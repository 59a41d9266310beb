-- Area: savings. What each policy saves against the two reference kernels: linux-6.5 (the
-- kernel of the RFC thread) and linux-7.1 (newest upstream as read, KERNEL.md section 6).
-- A policy is compared with the references replayed at the same setting: in a sweep, the
-- points whose grid values differ only in policy (points.setting); in a plain replay, the
-- run itself.

-- The reference policies savings are measured against.
CREATE VIEW _savings_baselines AS
SELECT * FROM (VALUES ('linux-6.5'), ('linux-7.1')) AS t (baseline);

-- The counters compared, per point, policy and VM, one row per counter (long form).
CREATE VIEW _savings_counters AS
UNPIVOT (
    SELECT
        point,
        setting,
        policy,
        vm,
        remote_tlb_flushes::DOUBLE AS remote_tlb_flushes,
        shootdown_ipis::DOUBLE AS shootdown_ipis,
        kvm_unmap_gfn_range_calls::DOUBLE AS kvm_unmap_gfn_range_calls,
        mmu_notifier_invalidations::DOUBLE AS mmu_notifier_invalidations,
        spte_zapped::DOUBLE AS spte_zapped,
        ept_violations::DOUBLE AS ept_violations,
        numa_hint_faults::DOUBLE AS numa_hint_faults,
        numa_pages_migrated::DOUBLE AS numa_pages_migrated,
        host_tlb_flushes::DOUBLE AS host_tlb_flushes,
        cost_us
    FROM shootdowns_by_vm
    JOIN (SELECT DISTINCT point, setting FROM _run_points) USING (point)
)
ON COLUMNS(* EXCLUDE (point, setting, policy, vm))
INTO NAME counter VALUE value;

-- Each policy against each reference kernel that was replayed, per VM and counter. A saving
-- is positive when the policy does less than the reference; the reference against itself
-- saves 0.
CREATE VIEW savings (
    point,           -- sweep grid point; a plain replay shows no point
    policy,          -- policy name
    vm,              -- VM name
    baseline,        -- reference policy: linux-6.5 or linux-7.1
    counter,         -- counter compared (a column of shootdowns_by_vm)
    baseline_value,  -- the counter under the reference policy [counter's unit]
    value,           -- the counter under this policy [counter's unit]
    saved,           -- baseline_value - value [counter's unit]
    saved_pct        -- 100 * saved / baseline_value; NULL when the reference is 0 [%]
) AS
SELECT
    c.point,
    c.policy,
    c.vm,
    b.baseline,
    c.counter,
    r.value,
    c.value,
    r.value - c.value,
    CASE WHEN r.value = 0 THEN NULL ELSE 100.0 * (r.value - c.value) / r.value END
FROM _savings_counters AS c
CROSS JOIN _savings_baselines AS b
JOIN _savings_counters AS r
    ON r.setting = c.setting AND r.policy = b.baseline AND r.vm = c.vm
    AND r.counter = c.counter;

-- The headline savings per policy and VM: shootdowns and modelled cost, against both
-- reference kernels (wide form of `savings` for the report).
CREATE VIEW savings_headline (
    point,                      -- sweep grid point; a plain replay shows no point
    policy,                     -- policy name
    vm,                         -- VM name
    remote_tlb_flushes,         -- the VM's TLB shootdowns under this policy [flushes]
    flushes_saved_vs_6_5_pct,   -- shootdowns saved against linux-6.5 [%]
    flushes_saved_vs_7_1_pct,   -- shootdowns saved against linux-7.1 [%]
    cost_us,                    -- modelled CPU time under this policy [us]
    cost_saved_vs_6_5_pct,      -- modelled time saved against linux-6.5 [%]
    cost_saved_vs_7_1_pct       -- modelled time saved against linux-7.1 [%]
) AS
SELECT
    s.point,
    s.policy,
    s.vm,
    s.remote_tlb_flushes,
    max(v.saved_pct) FILTER (v.counter = 'remote_tlb_flushes' AND v.baseline = 'linux-6.5'),
    max(v.saved_pct) FILTER (v.counter = 'remote_tlb_flushes' AND v.baseline = 'linux-7.1'),
    s.cost_us,
    max(v.saved_pct) FILTER (v.counter = 'cost_us' AND v.baseline = 'linux-6.5'),
    max(v.saved_pct) FILTER (v.counter = 'cost_us' AND v.baseline = 'linux-7.1')
FROM shootdowns_by_vm AS s
LEFT JOIN savings AS v USING (point, policy, vm)
GROUP BY s.point, s.policy, s.vm, s.remote_tlb_flushes, s.cost_us;

-- The headline of the whole run: every VM together, per policy (and point), against both
-- references.
CREATE VIEW savings_total (
    point,                      -- sweep grid point; a plain replay shows no point
    policy,                     -- policy name
    vms,                        -- VMs replayed [vms]
    remote_tlb_flushes,         -- TLB shootdowns of all VMs under this policy [flushes]
    flushes_saved_vs_6_5_pct,   -- shootdowns saved against linux-6.5 [%]
    flushes_saved_vs_7_1_pct,   -- shootdowns saved against linux-7.1 [%]
    cost_us,                    -- modelled CPU time of all VMs [us]
    cost_saved_vs_6_5_pct,      -- modelled time saved against linux-6.5 [%]
    cost_saved_vs_7_1_pct       -- modelled time saved against linux-7.1 [%]
) AS
WITH t AS (
    SELECT
        point,
        setting,
        policy,
        count(*) AS vms,
        sum(remote_tlb_flushes) AS flushes,
        fsum(cost_us) AS cost
    FROM shootdowns_by_vm
    JOIN (SELECT DISTINCT point, setting FROM _run_points) USING (point)
    GROUP BY point, setting, policy
),
b65 AS (SELECT setting, flushes, cost FROM t WHERE policy = 'linux-6.5'),
b71 AS (SELECT setting, flushes, cost FROM t WHERE policy = 'linux-7.1')
SELECT
    t.point,
    t.policy,
    t.vms,
    t.flushes::BIGINT,
    100.0 * (b65.flushes - t.flushes) / nullif(b65.flushes, 0),
    100.0 * (b71.flushes - t.flushes) / nullif(b71.flushes, 0),
    t.cost::DOUBLE,
    100.0 * (b65.cost - t.cost) / nullif(b65.cost, 0),
    100.0 * (b71.cost - t.cost) / nullif(b71.cost, 0)
FROM t
LEFT JOIN b65 ON b65.setting = t.setting
LEFT JOIN b71 ON b71.setting = t.setting;
