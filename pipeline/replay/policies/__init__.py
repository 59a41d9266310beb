"""The policies, one small module each, listed in one explicit table (like mpol_ops[])."""

from __future__ import annotations

from pipeline.errors import UnknownPolicyError
from pipeline.replay.policies import (
    linux_6_5,
    linux_6_18,
    linux_7_1,
    notify_changed,
    oracle,
    rfc_v2,
    skip_pinned,
)
from pipeline.replay.policies.base import Policy

POLICIES: dict[str, Policy] = {
    p.name: p
    for p in (
        linux_6_5.POLICY,
        skip_pinned.POLICY,
        rfc_v2.POLICY,
        linux_6_18.POLICY,
        linux_7_1.POLICY,
        oracle.POLICY,
        notify_changed.POLICY,
    )
}


def get_policy(name: str) -> Policy:
    """The policy called ``name``, or an :class:`UnknownPolicyError` with a hint."""
    try:
        return POLICIES[name]
    except KeyError:
        raise UnknownPolicyError(name, POLICIES) from None


__all__ = ["POLICIES", "Policy", "get_policy"]
