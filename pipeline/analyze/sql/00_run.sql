-- Area: run. What was replayed: the policies and VMs of this RESULTS directory. Private
-- helpers for the other areas, so that a (policy, vm) pair with no non-zero counter (the
-- results tables hold only non-zero rows) still shows up with zeros.

-- Policies of the run: the manifest's `policies` (a list of names, of {name: ...} objects,
-- or an object keyed by name) and any policy found in the results tables.
CREATE VIEW _run_policies AS
SELECT DISTINCT policy
FROM (
    SELECT unnest(
        CASE json_type(manifest -> 'policies')
            WHEN 'ARRAY' THEN list_transform(
                CAST(manifest -> 'policies' AS JSON[]),
                lambda p: coalesce(p ->> 'name', p ->> '$')
            )
            WHEN 'OBJECT' THEN json_keys(manifest -> 'policies')
            ELSE CAST([] AS VARCHAR[])
        END
    ) AS policy
    FROM results_manifest
    UNION ALL SELECT policy FROM epochs
    UNION ALL SELECT policy FROM vcpu_epochs
    UNION ALL SELECT policy FROM scans
)
WHERE policy IS NOT NULL;

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

-- Every (policy, vm) pair replayed.
CREATE VIEW _runs AS
SELECT p.policy, v.vm
FROM _run_policies AS p
CROSS JOIN _run_vms AS v;

-- Every (policy, vm, page_size) the headline shows: each page size seen for the VM under
-- any policy, for every policy.
CREATE VIEW _run_page_sizes AS
SELECT r.policy, r.vm, s.page_size
FROM _runs AS r
JOIN (SELECT DISTINCT vm, page_size FROM epochs) AS s USING (vm);
