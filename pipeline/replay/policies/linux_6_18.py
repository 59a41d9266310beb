"""linux-6.18: notifier per populated P4D range of each chunk (v6.12, Peter Xu's "push mmu
notifier to PUDs"), v6.7 PID-filter rules, d02c357e5bfa (v6.8) and c793a62823d1 (~v6.11) in
KVM; the pin checks are still those of v6.10 (COW rule for PTEs, none for THPs)
(KERNEL.md §4.1, §4.2, §6).
"""

from pipeline.replay.policies.base import Policy

POLICY = Policy(
    name="linux-6.18",
    summary="v6.18: notifier per chunk (P4D range) before the checks; pinned THPs protected",
    kernel=(6, 18),
    notifier_scope="p4d",
    pte_pinned_skip="cow",
    pmd_pinned_skip="none",
)
