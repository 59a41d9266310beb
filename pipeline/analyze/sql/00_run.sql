-- Area: run. What was replayed: the grid points, policies and VMs of this RESULTS directory
-- (a plain replay is the single point 0; ADR 0410), so that a (point, policy, vm) triple with no non-zero counter (the results tables hold only non-zero rows)
-- still shows up with zeros in the other areas.

-- The manifest's `policies` as a list of names: a list of names, a list of {name: ...}
-- objects, or an object keyed by name.
CREATE VIEW _run_manifest_policies AS
SELECT
    CASE json_type(manifest -> 'policies')
        WHEN 'ARRAY' THEN list_transform(
            CAST(manifest -> 'policies' AS JSON[]),
            lambda p: coalesce(p ->> 'name', p ->> '$')
        )
        WHEN 'OBJECT' THEN json_keys(manifest -> 'policies')
        ELSE CAST([] AS VARCHAR[])
    END AS names
FROM results_manifest;

-- Policies of the run with their display order: the manifest's order (the engine's POLICIES
-- table), then any other policy found in the results tables, by name. Join it to order rows
-- the way `tlbreplay policies` lists them.
CREATE VIEW run_policies (
    policy,       -- policy name
    policy_rank   -- 1-based display order
) AS
SELECT policy, row_number() OVER (ORDER BY min(manifest_rank) NULLS LAST, policy)
FROM (
    SELECT unnest(names) AS policy, generate_subscripts(names, 1) AS manifest_rank
    FROM _run_manifest_policies
    UNION ALL SELECT policy, NULL FROM epochs
    UNION ALL SELECT policy, NULL FROM vcpu_epochs
    UNION ALL SELECT policy, NULL FROM scans
)
WHERE policy IS NOT NULL
GROUP BY policy;

-- VMs of the run: the dataset's vms table and any VM found in the results tables.
CREATE VIEW _run_vms AS
SELECT DISTINCT vm
FROM (
    SELECT vm FROM vms
    UNION ALL SELECT vm FROM epochs
    UNION ALL SELECT vm FROM vcpu_epochs
    UNION ALL SELECT vm FROM scans
)
WHERE vm IS NOT NULL;

-- The grid points replayed and their settings (`_points`, made by views.py: the points of
-- a sweep, or the single point 0 of a plain replay, whose policy is NULL: every policy).
-- Failed points have no results and no rows here.
CREATE VIEW _run_points AS
SELECT p.point, p.setting, p.policy,
    coalesce(p.epoch_ms, CAST(m.manifest ->> 'epoch_ms' AS BIGINT), 100) AS epoch_ms
FROM _points AS p, results_manifest AS m
WHERE p.status = 'ok';

-- Every (point, policy, vm) replayed.
CREATE VIEW _runs AS
SELECT p.point, p.setting, r.policy, v.vm
FROM _run_points AS p
JOIN run_policies AS r ON p.policy IS NULL OR p.policy = r.policy
CROSS JOIN _run_vms AS v;

-- Every (point, policy, vm, page_size) the headline shows, for every policy: each page size
-- seen for the VM under any policy of the same setting (a plain replay: of the run); for a
-- VM with no rows at all, its regions' mapping sizes (2M for THP or hugetlbfs, else 4K), so
-- the headline still lists it, with zeros.
CREATE VIEW _run_page_sizes AS
WITH seen AS (
    SELECT DISTINCT p.setting, e.vm, e.page_size
    FROM epochs AS e
    JOIN _run_points AS p USING (point)
),
mapped AS (
    SELECT DISTINCT
        vm,
        CASE WHEN r.thp OR r.backing = 'hugetlbfs' THEN '2M' ELSE '4K' END AS page_size
    FROM (SELECT vm, unnest(regions) AS r FROM vms)
)
SELECT r.point, r.setting, r.policy, r.vm, s.page_size
FROM _runs AS r
JOIN (
    SELECT setting, vm, page_size FROM seen
    UNION ALL
    SELECT r.setting, m.vm, m.page_size
    FROM mapped AS m
    JOIN (SELECT DISTINCT setting FROM _run_points) AS r ON true
    WHERE NOT EXISTS (SELECT 1 FROM seen AS s WHERE s.setting = r.setting AND s.vm = m.vm)
) AS s USING (setting, vm);
