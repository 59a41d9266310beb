"""notify-changed: the new proposal. Decide the per-page checks first, then send one batched
notifier per chunk that lists only the sub-ranges whose PTEs/PMDs will change.

On v7.1 (folio_can_map_prot_numa()): change_prot_numa() walks the chunk under the page-table
locks to find the entries that will become PROT_NONE, then issues a single
invalidate_range_start carrying those sub-ranges; KVM zaps each sub-range (one
kvm_unmap_gfn_range per sub-range) and flushes once. Pinned, already-PROT_NONE and
unpopulated ranges are never invalidated, so a fully pinned VM gets no zap at all, and the
batching Sean Christopherson wanted to keep is kept (one flush per chunk). Unlike Sean's
deferred-notifier idea it needs no non-blocking start that could fail.
"""

from pipeline.replay.policies.base import Policy

POLICY = Policy(
    name="notify-changed",
    summary="new: one batched notifier per chunk listing only the sub-ranges that change (v7.1)",
    kernel=(7, 1),
    notifier_scope="changed",
    pte_pinned_skip="any",
    pmd_pinned_skip="any",
)
