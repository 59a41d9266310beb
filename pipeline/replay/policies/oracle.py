"""oracle: unmap only pages that will migrate, a lower bound (KERNEL.md §7 row 5).

PROT_NONE, the notifier and the KVM zap cover only unpinned pages that are misplaced for the
vCPUs that touched them in the latest epoch (the oracle's knowledge); at most one notifier per
chunk, listing those pages, and one flush if any had a present SPTE; no lock-contention
yields. On the hinting fault the oracle migrates a misplaced page without the two-stage
filter (it knows the page will be used from there). Notifier rules of v7.1 otherwise.
"""

from pipeline.replay.policies.base import Policy

POLICY = Policy(
    name="oracle",
    summary="lower bound: PROT_NONE + zap only pages that will migrate, one flush per chunk",
    kernel=(7, 1),
    notifier_scope="will_migrate",
    pte_pinned_skip="any",
    pmd_pinned_skip="any",
    migrate_filter="oracle",
)
