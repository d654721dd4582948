"""Roles and branch scopes (pure)."""

from __future__ import annotations

from api.domain.principal import Permission, Principal, Role

ZJ_PARTNER = Principal("zj-partner", Role.PARTNER, frozenset({"zj"}))
ZJ_ADMIN = Principal("zj-admin", Role.BRANCH_ADMIN, frozenset({"zj"}))
OPS = Principal("ops", Role.OPS, frozenset())


def test_partners_order_but_never_refund_nor_administer() -> None:
    assert ZJ_PARTNER.may_on(Permission.ORDER, "zj")
    assert not ZJ_PARTNER.may_on(Permission.ORDER, "bj")
    for permission in (Permission.REFUND, Permission.ADMIN, Permission.SEE_PII, Permission.AUDIT):
        assert not ZJ_PARTNER.may(permission)


def test_branch_admins_refund_and_see_personal_data_of_their_branches_only() -> None:
    assert ZJ_ADMIN.may_on(Permission.REFUND, "zj") and not ZJ_ADMIN.may_on(Permission.REFUND, "bj")
    assert ZJ_ADMIN.sees_pii_of("zj") and not ZJ_ADMIN.sees_pii_of("bj")
    # The audit log too, through the same scope: the query keeps its branches' entries only.
    assert ZJ_ADMIN.may(Permission.AUDIT) and ZJ_ADMIN.scope(None) == ["zj"]


def test_ops_does_everything_everywhere() -> None:
    assert all(OPS.may_on(p, "cq") for p in Permission)


def test_visible_branches_are_the_requested_ones_within_scope() -> None:
    assert ZJ_PARTNER.visible(None, ["zj", "bj", "yn"]) == ["zj"]
    assert ZJ_PARTNER.visible(["bj", "zj"], ["zj", "bj"]) == ["zj"]
    assert ZJ_PARTNER.visible(["bj"], ["zj", "bj"]) == []
    assert OPS.visible(None, ["zj", "bj"]) == ["zj", "bj"]


def test_scope_narrows_a_query_to_the_keys_branches() -> None:
    assert ZJ_PARTNER.scope(None) == ["zj"]
    assert ZJ_PARTNER.scope(["bj", "zj"]) == ["zj"]
    assert ZJ_PARTNER.scope(["bj"]) == []
    # None: every branch, for a role that sees them all.
    assert OPS.scope(None) is None
    assert OPS.scope(["bj"]) == ["bj"]
