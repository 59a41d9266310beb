-- Area: sweep. Views over a `tlbreplay sweep` RESULTS directory (docs/scale.md): one replay
-- per grid point, the point id as the `point` hive partition of epochs, and the grid keys of
-- every point in the `points` source view (points.parquet, schemas/points.toml). Loaded only
-- for a sweep (pipeline/analyze/sweep_plots.py:attach_sweep), after the standard views.

-- Totals of each point, all VMs together; zeros for an ok point without a non-zero row,
-- NULL counters for a failed point.
CREATE VIEW sweep_point_totals (
    point,                       -- grid point id (points.point)
    setting,                     -- id of the point's keys except policy (points.setting)
    policy,                      -- policy replayed at this point
    status,                      -- ok | failed
    remote_tlb_flushes,          -- KVM TLB shootdowns [flushes]
    shootdown_ipis,              -- shootdown IPIs [ipis]
    mmu_notifier_invalidations,  -- invalidate_range_start calls reaching KVM [calls]
    spte_zapped,                 -- SPTEs zapped [sptes]
    ept_violations,              -- EPT violations (refaults) [faults]
    numa_pte_updates,            -- base pages made PROT_NONE [pages]
    numa_pages_migrated,         -- pages migrated [pages]
    cost_us                      -- modelled CPU time [us]
) AS
WITH t AS (
    SELECT
        CAST(point AS BIGINT) AS point,
        sum(remote_tlb_flushes) AS remote_tlb_flushes,
        sum(shootdown_ipis) AS shootdown_ipis,
        sum(mmu_notifier_invalidations) AS mmu_notifier_invalidations,
        sum(spte_zapped) AS spte_zapped,
        sum(ept_violations) AS ept_violations,
        sum(numa_pte_updates) AS numa_pte_updates,
        sum(numa_pages_migrated) AS numa_pages_migrated,
        sum(cost_us) AS cost_us
    FROM epochs
    GROUP BY 1
)
SELECT
    p.point,
    p.setting,
    p.policy,
    p.status,
    CASE WHEN p.status = 'ok' THEN coalesce(t.remote_tlb_flushes, 0) END,
    CASE WHEN p.status = 'ok' THEN coalesce(t.shootdown_ipis, 0) END,
    CASE WHEN p.status = 'ok' THEN coalesce(t.mmu_notifier_invalidations, 0) END,
    CASE WHEN p.status = 'ok' THEN coalesce(t.spte_zapped, 0) END,
    CASE WHEN p.status = 'ok' THEN coalesce(t.ept_violations, 0) END,
    CASE WHEN p.status = 'ok' THEN coalesce(t.numa_pte_updates, 0) END,
    CASE WHEN p.status = 'ok' THEN coalesce(t.numa_pages_migrated, 0) END,
    CASE WHEN p.status = 'ok' THEN coalesce(t.cost_us, 0) END
FROM points AS p
LEFT JOIN t USING (point);

-- Each point against the reference kernels replayed at the same setting (the same grid
-- values except policy); a saving is positive when the point does less than the reference.
CREATE VIEW sweep_savings (
    point,               -- grid point id
    setting,             -- id of the point's keys except policy
    policy,              -- policy of the point
    baseline,            -- reference policy: linux-6.5 or linux-7.1
    remote_tlb_flushes,  -- shootdowns at this point [flushes]
    baseline_flushes,    -- shootdowns of the reference at the same setting [flushes]
    flushes_saved_pct,   -- 100 * (baseline - point) / baseline; NULL when the reference is 0 [%]
    cost_us,             -- modelled CPU time at this point [us]
    baseline_cost_us,    -- modelled CPU time of the reference [us]
    cost_saved_pct       -- modelled time saved against the reference [%]
) AS
SELECT
    s.point,
    s.setting,
    s.policy,
    b.policy,
    s.remote_tlb_flushes,
    b.remote_tlb_flushes,
    100.0 * (b.remote_tlb_flushes - s.remote_tlb_flushes) / nullif(b.remote_tlb_flushes, 0),
    s.cost_us,
    b.cost_us,
    100.0 * (b.cost_us - s.cost_us) / nullif(b.cost_us, 0)
FROM sweep_point_totals AS s
JOIN sweep_point_totals AS b
    ON b.setting = s.setting AND b.policy IN ('linux-6.5', 'linux-7.1')
WHERE s.status = 'ok' AND b.status = 'ok';

-- Every (point, key, value) of the grid keys a point sets, as text (long form).
CREATE VIEW _sweep_keys AS
UNPIVOT (
    SELECT
        point,
        CAST(scan_size_mb AS VARCHAR) AS scan_size_mb,
        CAST(scan_delay_ms AS VARCHAR) AS scan_delay_ms,
        CAST(scan_period_min_ms AS VARCHAR) AS scan_period_min_ms,
        CAST(scan_period_max_ms AS VARCHAR) AS scan_period_max_ms,
        CAST(yield_per_vcpu AS VARCHAR) AS yield_per_vcpu,
        CAST(yield_d02c357e5bfa_factor AS VARCHAR) AS yield_d02c357e5bfa_factor,
        yield_mode,
        CAST(spte_4k AS VARCHAR) AS spte_4k,
        CAST(thp_fault_fallback AS VARCHAR) AS thp_fault_fallback,
        CAST(preempt_dynamic AS VARCHAR) AS preempt_dynamic,
        preempt,
        mmu,
        CAST(epoch_ms AS VARCHAR) AS epoch_ms,
        CAST(pinned AS VARCHAR) AS pinned,
        CAST(thp AS VARCHAR) AS thp,
        CAST(vcpus AS VARCHAR) AS vcpus,
        CAST(mem_gib AS VARCHAR) AS mem_gib,
        CAST(duration_s AS VARCHAR) AS duration_s,
        CAST(synth_seed AS VARCHAR) AS synth_seed
    FROM points
)
ON COLUMNS(* EXCLUDE (point))
INTO NAME key VALUE value;

-- The keys the sweep varies (more than one value), policy aside.
CREATE VIEW sweep_axes (
    key,     -- grid key (a column of points)
    values   -- distinct values it takes [values]
) AS
SELECT key, count(DISTINCT value)
FROM _sweep_keys
GROUP BY key
HAVING count(DISTINCT value) > 1;

-- Savings against each varied key: per key value and policy, the mean over the points that
-- share that value (the other keys averaged out). The report's sensitivity plots.
CREATE VIEW sweep_sensitivity (
    key,                 -- varied grid key
    value,               -- its value, as text
    value_num,           -- its value as a number (NULL for text and booleans)
    policy,              -- policy
    baseline,            -- reference policy: linux-6.5 or linux-7.1
    points,              -- points averaged [points]
    remote_tlb_flushes,  -- mean shootdowns [flushes]
    flushes_saved_pct,   -- mean shootdowns saved against the reference [%]
    cost_us,             -- mean modelled CPU time [us]
    cost_saved_pct       -- mean modelled time saved against the reference [%]
) AS
SELECT
    k.key,
    k.value,
    TRY_CAST(k.value AS DOUBLE),
    s.policy,
    s.baseline,
    count(*),
    avg(s.remote_tlb_flushes),
    avg(s.flushes_saved_pct),
    avg(s.cost_us),
    avg(s.cost_saved_pct)
FROM sweep_savings AS s
JOIN _sweep_keys AS k USING (point)
WHERE k.key IN (SELECT key FROM sweep_axes)
GROUP BY k.key, k.value, s.policy, s.baseline;
