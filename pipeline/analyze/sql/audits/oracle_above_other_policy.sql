-- Audit: the oracle is a lower bound (KERNEL.md 7: it unmaps only pages that will be
-- migrated): no policy zaps fewer SPTEs of a VM over the run than the oracle. Flushes are
-- not compared: the oracle protects fewer pages, so its scan cadence differs (fewer chunks
-- use up the budget, fewer faults adapt the period), and which SPTEs are present when a
-- later scan comes depends on each policy's own history; the bound holds per state, not
-- per run (tests/replay/test_contracts.py checks it per chunk on a fixed scenario).
-- In a sweep the oracle is compared with the points of the same setting (the same grid
-- values but the policy), never across settings.
-- Returns: one row per (vm, other policy) whose SPTE zaps are below the oracle's (with the
-- two points for a sweep).
WITH s AS (
    SELECT b.*, r.setting
    FROM shootdowns_by_vm AS b
    JOIN (SELECT DISTINCT point, setting FROM _run_points) AS r USING (point)
)
SELECT o.point, o.vm, 'spte_zapped' AS counter, o.spte_zapped AS oracle_value,
    p.point AS other_point, p.policy AS other_policy, p.spte_zapped AS other_value
FROM s AS o
JOIN s AS p ON p.setting = o.setting AND p.vm = o.vm AND p.policy <> o.policy
WHERE o.policy = 'oracle'
  AND o.spte_zapped > p.spte_zapped
ORDER BY o.point, o.vm, p.policy
