-- Audit: a pinned page never migrates (KERNEL.md 5.5: folio_maybe_dma_pinned() makes
-- try_to_migrate_one() fail with -EBUSY, and the refcount freeze fails with -EAGAIN). The
-- results count pages, not which pages, so the check is exact for VMs whose guest RAM is
-- wholly pinned: any numa_pages_migrated there is a pinned page migrated.
-- Returns: one row per (point, policy, vm) of a fully pinned VM that migrated pages.
WITH pinned AS (
    SELECT
        vm,
        mem_bytes,
        coalesce((
            SELECT sum(p.nr_pages)
            FROM (SELECT unnest(regions) AS r) AS rs,
                 LATERAL (SELECT unnest(rs.r.pinned) AS pr) AS pp,
                 LATERAL (SELECT pp.pr.nr_pages AS nr_pages) AS p
        ), 0)::BIGINT * 4096 AS pinned_bytes
    FROM vms
)
SELECT s.point, s.policy, s.vm, p.pinned_bytes, p.mem_bytes, s.numa_pages_migrated
FROM shootdowns_by_vm AS s
JOIN pinned AS p USING (vm)
WHERE p.pinned_bytes >= p.mem_bytes
  AND s.numa_pages_migrated > 0
ORDER BY s.point, s.policy, s.vm
