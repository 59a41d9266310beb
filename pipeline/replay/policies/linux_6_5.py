"""linux-6.5: the kernel of the RFC thread (KERNEL.md §4.1, §4.2, §7 row 1).

Notifier once per populated 1 GiB PUD range in change_pmd_range(), sent before the per-page
checks; change_pte_range() skips pinned 4K pages of COW mappings (``page_count != 1``);
change_huge_pmd() has no pin check, so pinned THPs get PROT_NONE and fail to migrate.
"""

from pipeline.replay.policies.base import Policy

POLICY = Policy(
    name="linux-6.5",
    summary="v6.5: notifier per populated 1 GiB PUD range before the checks; pinned THPs protected",
    kernel=(6, 5),
    notifier_scope="pud",
    pte_pinned_skip="cow",
    pmd_pinned_skip="none",
)
