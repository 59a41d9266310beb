"""skip-pinned: David Hildenbrand's suggestion on v6.5 (KERNEL.md §2.3, §7 row 2).

"Why do we need all that, when we should simply not be applying PROT_NONE to pinned pages?"
The COW rule of change_pte_range() is kept, and the same check is added to change_huge_pmd();
the MMU notifier is unchanged (still per PUD range, before the checks). The pinned check stays
COW-only as David described it, so pinned MAP_SHARED pages (column S') still get PROT_NONE.
"""

from pipeline.replay.policies.base import Policy

POLICY = Policy(
    name="skip-pinned",
    summary="v6.5 + pinned check for THPs too (COW rule); notifier unchanged",
    kernel=(6, 5),
    notifier_scope="pud",
    pte_pinned_skip="cow",
    pmd_pinned_skip="cow",
)
