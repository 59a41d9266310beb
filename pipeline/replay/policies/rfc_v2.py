"""rfc-v2: Yan Zhao's "[RFC PATCH v2 0/5] Reduce NUMA balance caused TLB-shootdowns in a VM"
on v6.5 (KERNEL.md §2.2, §7 row 3).

Patch 1 flags the change_pmd_range() notifier MMU_NOTIFIER_RANGE_NUMA; patch 5 makes KVM's
invalidate_range_start a null handler for it (no zap, no flush, but the range is still marked
in progress and kvm_unmap_hva_range still fires); patches 3-4 add ``.numa_protect()``, called
once per PTE/PMD that really becomes PROT_NONE, which zaps that entry and flushes if its SPTE
was present (may_block false: no yields). Patch 2 skips anon+AnonExclusive pinned pages for
PTEs and THPs (shared pages are not anon, so pinned S' pages are still protected).
"""

from pipeline.replay.policies.base import Policy

POLICY = Policy(
    name="rfc-v2",
    summary="Yan Zhao's RFC v2: no zap at range start, numa_protect zap per protected entry",
    kernel=(6, 5),
    notifier_scope="pud",
    pte_pinned_skip="anon",
    pmd_pinned_skip="anon",
    kvm_zaps_numa_range=False,
    numa_protect=True,
)
