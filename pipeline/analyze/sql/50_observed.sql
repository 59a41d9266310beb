-- Area: observed. What the real kernel did, counted from the ftrace tables of an ingested
-- trace, next to what the engine simulated for the same VM. A synthetic dataset has no
-- ftrace tables: every view here is then empty.
--
-- Attribution of an event to a VM: its pid is one of the VM's vCPU thread ids
-- (vms.vcpu_tids); otherwise, when the dataset has exactly one VM, that VM; otherwise the
-- event is unattributed (vm NULL) and still listed in `observed`.

-- vCPU thread id -> VM.
CREATE VIEW _observed_vm_tids AS
SELECT DISTINCT vm, unnest(vcpu_tids) AS tid FROM vms;

-- The dataset's only VM, if it has exactly one.
CREATE VIEW _observed_single_vm AS
SELECT min(vm) AS vm FROM vms HAVING count(*) = 1;

-- Every pid seen in the events counted below, with its VM (NULL when unattributed).
CREATE VIEW _observed_pid_vm AS
SELECT p.pid, coalesce(t.vm, s.vm) AS vm
FROM (
    SELECT DISTINCT pid FROM (
        SELECT pid FROM ftrace_kvm_unmap_hva_range
        UNION ALL SELECT pid FROM ftrace_kvm_page_fault
        UNION ALL SELECT pid FROM ftrace_kvm_mmu_spte_requested
        UNION ALL SELECT pid FROM ftrace_kvm_tdp_mmu_spte_changed
        UNION ALL SELECT pid FROM ftrace_tlb_flush
        UNION ALL SELECT pid FROM ftrace_ipi_send_cpumask
        UNION ALL SELECT pid FROM ftrace_mm_migrate_pages
    )
) AS p
LEFT JOIN _observed_vm_tids AS t ON t.tid = p.pid
LEFT JOIN _observed_single_vm AS s ON true;

-- Guest RAM of each VM in the VMM's address space: one [hva_start, hva_end) per region.
CREATE VIEW _observed_vm_hva AS
SELECT
    vm,
    CAST(r.hva_start AS HUGEINT) AS hva_start,
    CAST(r.hva_start AS HUGEINT) + r.size_bytes AS hva_end
FROM (SELECT vm, unnest(regions) AS r FROM vms);

-- kvm:kvm_unmap_hva_range events whose range overlaps their VM's guest RAM, with the bytes
-- inside it. The tracepoint fires at the top of kvm_mmu_notifier_invalidate_range_start()
-- for any range of the mm, before the memslot lookup (KERNEL.md 5.3), so it also counts
-- invalidations of the VMM's other mappings, which the engine does not model.
CREATE VIEW _observed_unmap_guest AS
WITH u AS (
    SELECT
        row_number() OVER () AS event,
        ts_ns,
        pid,
        CAST(hva_start AS HUGEINT) AS hva_start,
        CAST(hva_end AS HUGEINT) AS hva_end
    FROM ftrace_kvm_unmap_hva_range
)
SELECT
    u.event,
    any_value(u.ts_ns) AS ts_ns,
    any_value(u.pid) AS pid,
    sum(least(u.hva_end, g.hva_end) - greatest(u.hva_start, g.hva_start)) AS guest_bytes
FROM u
JOIN _observed_pid_vm AS p ON p.pid IS NOT DISTINCT FROM u.pid
JOIN _observed_vm_hva AS g ON g.vm = p.vm AND u.hva_start < g.hva_end AND u.hva_end > g.hva_start
GROUP BY u.event;

-- enum tlb_flush_reason (x86, include/linux/mm_types.h; schemas/enums.toml): the numeric
-- code is stable, the strings changed case in v7, so counts go by code.
CREATE VIEW _observed_tlb_flush_reasons AS
SELECT * FROM (VALUES
    (0, 'flush on task switch'),
    (1, 'remote shootdown'),
    (2, 'local shootdown'),
    (3, 'local mm shootdown'),
    (4, 'remote ipi send'),
    (5, 'remote wrong cpu')
) AS t (reason_code, reason);

-- The host flush that closes each guest-RAM invalidation: the same thread's first "local mm
-- shootdown" at or after the notifier, within 100 ms. mm/mprotect.c change_protection() ends
-- in flush_tlb_range() (arch/x86/mm/tlb.c flush_tlb_mm_range()), the engine's
-- host_tlb_flushes. The VMM's other local mm shootdowns (munmap, mprotect, the scans of its
-- own VMAs) are not the VM's and are left out.
CREATE VIEW _observed_scan_flushes AS
SELECT DISTINCT f.flush, f.pid, f.ts_ns
FROM _observed_unmap_guest AS u
ASOF JOIN (
    SELECT row_number() OVER () AS flush, ts_ns, pid
    FROM ftrace_tlb_flush
    WHERE reason_code = 3
) AS f ON f.pid = u.pid AND f.ts_ns >= u.ts_ns
WHERE f.ts_ns - u.ts_ns <= 100000000;

-- Their IPIs: a "remote shootdown" on another CPU (the receiving side of
-- flush_tlb_mm_range(): flush_tlb_func(), reason TLB_REMOTE_SHOOTDOWN, with the sender's page
-- count) whose latest preceding local mm shootdown of the same page count, within 1 ms, is
-- such a closing flush. The scan's flushes of the VMM's own small VMAs come microseconds
-- later, with their own page counts and IPIs.
CREATE VIEW _observed_scan_flush_ipis AS
SELECT r.ipi, r.pid
FROM (
    SELECT row_number() OVER () AS ipi, ts_ns, pid, pages
    FROM ftrace_tlb_flush
    WHERE reason_code = 1
) AS r
ASOF JOIN (
    SELECT row_number() OVER () AS flush, ts_ns, pid, pages
    FROM ftrace_tlb_flush
    WHERE reason_code = 3
) AS f ON f.pages = r.pages AND f.ts_ns <= r.ts_ns
WHERE r.ts_ns - f.ts_ns <= 1000000
  AND f.pid <> r.pid
  AND f.flush IN (SELECT flush FROM _observed_scan_flushes);

-- Leaf SPTEs zapped, from kvmmmu:kvm_tdp_mmu_spte_changed (TDP MMU only): the old SPTE was
-- MMU-present (SPTE_MMU_PRESENT_MASK, bit 11, arch/x86/kvm/mmu/spte.h) and a leaf (level 1,
-- or PT_PAGE_SIZE_MASK bit 7 set: is_last_spte()), the new one is not present.
CREATE VIEW _observed_spte_zaps AS
SELECT
    pid,
    CASE level WHEN 1 THEN '4K' WHEN 2 THEN '2M' WHEN 3 THEN '1G' ELSE 'L' || level END
        AS page_size
FROM ftrace_kvm_tdp_mmu_spte_changed
WHERE (CAST(old_spte AS UBIGINT) & 2048) <> 0
  AND (CAST(new_spte AS UBIGINT) & 2048) = 0
  AND (level = 1 OR (CAST(old_spte AS UBIGINT) & 128) <> 0);

-- Event counts per VM, one row per (counter, detail).
CREATE VIEW observed (
    vm,       -- VM the events are attributed to (NULL: unattributed, see the file header)
    counter,  -- ftrace event counted (or spte_zapped, derived from kvm_tdp_mmu_spte_changed)
    detail,   -- what of it: calls, bytes (also: in guest RAM), a tlb_flush reason, a page size, a callback
    value     -- the count or sum [calls, bytes, sptes or pages as detail says]
) AS
WITH ev AS (
    SELECT 'kvm_unmap_hva_range' AS counter, 'calls' AS detail, pid, 1 AS n
    FROM ftrace_kvm_unmap_hva_range
    UNION ALL
    SELECT 'kvm_unmap_hva_range', 'bytes', pid, CAST(hva_end - hva_start AS HUGEINT)
    FROM ftrace_kvm_unmap_hva_range
    UNION ALL
    SELECT 'kvm_unmap_hva_range', 'calls in guest RAM', pid, 1 FROM _observed_unmap_guest
    UNION ALL
    SELECT 'kvm_unmap_hva_range', 'bytes in guest RAM', pid, guest_bytes
    FROM _observed_unmap_guest
    UNION ALL
    SELECT 'kvm_page_fault', 'calls', pid, 1 FROM ftrace_kvm_page_fault
    UNION ALL
    SELECT 'kvm_mmu_spte_requested', 'calls', pid, 1 FROM ftrace_kvm_mmu_spte_requested
    UNION ALL
    SELECT 'spte_zapped', page_size, pid, 1 FROM _observed_spte_zaps
    UNION ALL
    SELECT 'tlb_flush', coalesce(r.reason, lower(f.reason)), f.pid, 1
    FROM ftrace_tlb_flush AS f
    LEFT JOIN _observed_tlb_flush_reasons AS r USING (reason_code)
    UNION ALL
    SELECT 'tlb_flush', 'local mm shootdown closing a guest-RAM notifier', pid, 1
    FROM _observed_scan_flushes
    UNION ALL
    SELECT 'tlb_flush', 'remote shootdown after one', pid, 1
    FROM _observed_scan_flush_ipis
    UNION ALL
    SELECT 'ipi_send_cpumask', regexp_replace(callback, '\+.*$', '') || ' calls', pid, 1
    FROM ftrace_ipi_send_cpumask
    UNION ALL
    -- targets: CPUs in the cpulist printed by %*pbl ("0-3,8")
    SELECT 'ipi_send_cpumask', regexp_replace(callback, '\+.*$', '') || ' targets', pid,
        list_sum(list_transform(
            string_split(cpumask, ','),
            lambda r: CASE WHEN r LIKE '%-%'
                THEN CAST(split_part(r, '-', 2) AS INTEGER)
                    - CAST(split_part(r, '-', 1) AS INTEGER) + 1
                ELSE 1 END
        ))
    FROM ftrace_ipi_send_cpumask
    UNION ALL
    SELECT 'mm_migrate_pages', reason || ' nr_succeeded', pid, nr_succeeded
    FROM ftrace_mm_migrate_pages
    UNION ALL
    SELECT 'mm_migrate_pages', reason || ' nr_failed', pid, nr_failed
    FROM ftrace_mm_migrate_pages
)
SELECT p.vm, ev.counter, ev.detail, CAST(sum(ev.n) AS BIGINT)
FROM ev
LEFT JOIN _observed_pid_vm AS p ON p.pid IS NOT DISTINCT FROM ev.pid
GROUP BY p.vm, ev.counter, ev.detail;

-- Which observed numbers stand for which simulated counter. KVM's remote flushes appear as
-- ipi_send_cpumask with callback ack_kick (KERNEL.md section 9, gaps); the host's flushes
-- of guest RAM as the tlb_flush "local mm shootdown" closing a guest-RAM notifier in the
-- thread that changed the PTEs, and their IPIs as "remote shootdown" on the receiving CPUs
-- (arch/x86/mm/tlb.c).
CREATE VIEW _observed_counter_map AS
SELECT * FROM (VALUES
    ('mmu_notifier_invalidations', 'kvm_unmap_hva_range', 'calls in guest RAM'),
    ('notifier_bytes', 'kvm_unmap_hva_range', 'bytes in guest RAM'),
    ('ept_violations', 'kvm_page_fault', 'calls'),
    ('spte_requested', 'kvm_mmu_spte_requested', 'calls'),
    ('spte_zapped', 'spte_zapped', '4K'),
    ('spte_zapped', 'spte_zapped', '2M'),
    ('spte_zapped', 'spte_zapped', '1G'),
    ('remote_tlb_flushes', 'ipi_send_cpumask', 'ack_kick calls'),
    ('shootdown_ipis', 'ipi_send_cpumask', 'ack_kick targets'),
    ('host_tlb_flushes', 'tlb_flush', 'local mm shootdown closing a guest-RAM notifier'),
    ('host_tlb_flush_ipis', 'tlb_flush', 'remote shootdown after one'),
    ('numa_pages_migrated', 'mm_migrate_pages', 'numa_misplaced nr_succeeded')
) AS t (sim_counter, counter, detail);

-- Observed totals per VM and simulated counter.
CREATE VIEW _observed_by_counter AS
SELECT o.vm, m.sim_counter AS counter, sum(o.value) AS observed,
    string_agg(DISTINCT m.counter || ' ' || m.detail, ', ') AS observed_from
FROM observed AS o
JOIN _observed_counter_map AS m USING (counter, detail)
WHERE o.vm IS NOT NULL
GROUP BY o.vm, m.sim_counter;

-- Simulated totals (shootdowns_by_vm) in long form, plus spte_requested: every SPTE
-- fault-in (kvm_mmu_spte_requested fires once per fault-in), i.e. the refaults on zapped
-- SPTEs (ept_violations) plus first fault-ins (vcpu_epochs.spte_faultins).
CREATE VIEW _observed_simulated AS
UNPIVOT (
    SELECT s.point, s.policy, s.vm, s.mmu_notifier_invalidations, s.notifier_bytes, s.ept_violations,
        s.ept_violations + coalesce(f.spte_faultins, 0) AS spte_requested,
        s.spte_zapped, s.remote_tlb_flushes, s.shootdown_ipis, s.host_tlb_flushes,
        s.host_tlb_flush_ipis, s.numa_pages_migrated
    FROM shootdowns_by_vm AS s
    LEFT JOIN (
        SELECT point, policy, vm, sum(spte_faultins) AS spte_faultins
        FROM vcpu_epochs
        GROUP BY point, policy, vm
    ) AS f USING (point, policy, vm)
)
ON COLUMNS(* EXCLUDE (point, policy, vm))
INTO NAME counter VALUE simulated;

-- Simulated and observed side by side, for VMs of a real trace (empty for synthetic data):
-- every simulated counter of such a VM, with observed NULL where the trace holds no event
-- that counts it (e.g. KVM's remote flushes without ipi_send_cpumask, zaps on a shadow MMU),
-- so a counter the trace cannot check is shown as unchecked, never left out.
CREATE VIEW observed_vs_simulated (
    point,          -- sweep grid point; a plain replay shows no point
    policy,         -- policy name (the one matching the traced kernel is the calibration)
    vm,             -- VM name
    counter,        -- simulated counter (a column of shootdowns_by_vm, or spte_requested)
    simulated,      -- the engine's total for the run [counter's unit]
    observed,       -- the kernel's total from the trace [counter's unit]
    observed_from,  -- ftrace event and detail it was counted from
    ratio           -- simulated / observed; NULL when observed is 0
) AS
SELECT
    s.point,
    s.policy,
    s.vm,
    s.counter,
    s.simulated,
    CAST(o.observed AS BIGINT),
    coalesce(o.observed_from, 'not in the trace'),
    CASE WHEN o.observed = 0 THEN NULL ELSE s.simulated / o.observed END
FROM _observed_simulated AS s
LEFT JOIN _observed_by_counter AS o USING (vm, counter)
WHERE s.vm IN (SELECT vm FROM _observed_by_counter);
