"""linux-7.1: v6.19+ folio_can_map_prot_numa() skips every pinned folio, PTE or PMD, any
mapping (03aa8e4f2732, ca43034cdb22, f66e2727ddfc); the notifier is still sent per chunk
before the checks, so KVM still zaps and flushes pinned ranges (KERNEL.md §4.2, §7 row 4).
"""

from pipeline.replay.policies.base import Policy

POLICY = Policy(
    name="linux-7.1",
    summary="v6.19+ folio_can_map_prot_numa(): pinned skipped everywhere; notifier still per chunk",
    kernel=(7, 1),
    notifier_scope="p4d",
    pte_pinned_skip="any",
    pmd_pinned_skip="any",
)
