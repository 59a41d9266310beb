-- Audit: the oracle is a lower bound (KERNEL.md 7: it unmaps only pages that will be
-- migrated). No policy may zap fewer SPTEs or send fewer KVM TLB shootdowns than the oracle
-- to the same VM.
-- Returns: one row per (vm, counter, other policy) where the oracle is above it.
WITH t AS (
    UNPIVOT (
        SELECT policy, vm, remote_tlb_flushes, kvm_unmap_gfn_range_calls, spte_zapped
        FROM shootdowns_by_vm
    )
    ON remote_tlb_flushes, kvm_unmap_gfn_range_calls, spte_zapped
    INTO NAME counter VALUE value
)
SELECT o.vm, o.counter, o.value AS oracle_value, p.policy AS other_policy,
    p.value AS other_value
FROM t AS o
JOIN t AS p ON p.vm = o.vm AND p.counter = o.counter AND p.policy <> o.policy
WHERE o.policy = 'oracle'
  AND o.value > p.value
ORDER BY o.vm, o.counter, p.policy
