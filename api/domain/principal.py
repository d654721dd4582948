"""Who is asking: the roles, the branches a key may see, and what each role may do.

Pure: no I/O. The resolvers and services ask a :class:`Principal` before they
read or write; a branch outside the key's scope looks exactly like a branch
that does not exist.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


class Role(enum.StrEnum):
    PARTNER = "partner"  # catalogs of its branches; create, read, cancel and pay their orders
    BRANCH_ADMIN = "branch_admin"  # also refunds, config and provider state of its branches
    OPS = "ops"  # everything, all branches


class Permission(enum.StrEnum):
    READ = "read"  # catalogs, orders, payments, events
    ORDER = "order"  # create, cancel and pay orders
    REFUND = "refund"
    ADMIN = "admin"  # config status, provider state
    SEE_PII = "see_pii"  # unmasked phone and ID card numbers
    AUDIT = "audit"  # the audit log (a branch admin: its branches' entries only)
    WEBHOOKS = "webhooks"  # manage webhook endpoints of its branches, see their deliveries
    RECONCILE = "reconcile"  # run bill reconciliations, read and resolve their discrepancies
    ALL_BRANCHES = "all_branches"


GRANTS: dict[Role, frozenset[Permission]] = {
    Role.PARTNER: frozenset({Permission.READ, Permission.ORDER, Permission.WEBHOOKS}),
    Role.BRANCH_ADMIN: frozenset(
        {
            Permission.READ,
            Permission.ORDER,
            Permission.REFUND,
            Permission.ADMIN,
            Permission.SEE_PII,
            Permission.WEBHOOKS,
            Permission.RECONCILE,
            Permission.AUDIT,
        }
    ),
    Role.OPS: frozenset(Permission),
}


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated API key: its name (for the audit log), role and branch scope."""

    name: str
    role: Role
    branches: frozenset[str]  # ignored for roles with ALL_BRANCHES

    def may(self, permission: Permission) -> bool:
        return permission in GRANTS[self.role]

    def sees_branch(self, code: str) -> bool:
        return self.may(Permission.ALL_BRANCHES) or code in self.branches

    def may_on(self, permission: Permission, branch: str) -> bool:
        return self.may(permission) and self.sees_branch(branch)

    def visible(self, requested: Sequence[str] | None, existing: Iterable[str]) -> list[str]:
        """The branches a query may cover: the requested ones (or all) within scope."""
        candidates = list(existing) if requested is None else list(requested)
        return [code for code in candidates if self.sees_branch(code)]

    def scope(self, requested: Sequence[str] | None) -> list[str] | None:
        """The branches an orders query may cover: the requested ones (None: all) within scope.

        None means every branch, for roles that see all of them.
        """
        if self.may(Permission.ALL_BRANCHES):
            return None if requested is None else list(requested)
        return self.visible(requested, self.branches)

    def sees_pii_of(self, branch: str) -> bool:
        return self.may_on(Permission.SEE_PII, branch)
