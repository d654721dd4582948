"""Bill reconciliation over GraphQL: the runs per bill day, their discrepancies, resolving one.

For ``ops`` keys (every branch) and ``branch_admin`` keys (their own branches);
a partner key gets a top-level FORBIDDEN. A reconciliation of a branch the key
does not see is reported exactly like one that does not exist
(docs/reconciliation.md).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any

import strawberry
from strawberry.types import Info

from api.domain.bills import DiscrepancyKind as DomainDiscrepancyKind
from api.domain.bills import beijing_day
from api.domain.principal import Permission, Principal
from api.domain.problems import ServiceError, UserErrorCode
from api.domain.text import (
    BRANCH_CODE,
    DISCREPANCIES_CURSOR,
    PROVIDER,
    RECONCILIATION_ID,
)
from api.schema.context import Context
from api.schema.errors import ApiError, ErrorCode, bad_input
from api.schema.mutation import user_errors
from api.schema.types import PageInfo, UserError
from api.services.bills import BillReconciliation

Document = dict[str, Any]

# The widest window ``reconciliations(from, to)`` covers: a year of bill days.
MAX_RECONCILIATION_DAYS = 366
# ``from`` when only ``to`` (or neither) is given: the 31 bill days up to ``to``.
DEFAULT_RECONCILIATION_DAYS = 31


@strawberry.enum(description="How a reconciliation run ended (docs/reconciliation.md).")
class ReconciliationStatus(enum.Enum):
    COMPLETE = "COMPLETE"
    NOT_READY = "NOT_READY"
    NO_BILL = "NO_BILL"
    FAILED = "FAILED"


DiscrepancyKind = strawberry.enum(
    DomainDiscrepancyKind,
    name="DiscrepancyKind",
    description="What disagrees between the platform's bill and our records "
    "(docs/reconciliation.md).",
)


@strawberry.enum(description="How a discrepancy was resolved.")
class ResolutionHow(enum.Enum):
    APPLIED = "APPLIED"
    MANUAL = "MANUAL"
    CLEARED = "CLEARED"


def _reconcile(info: Info[Context, None]) -> tuple[BillReconciliation, Principal]:
    principal = info.context.require(Permission.RECONCILE)
    service = info.context.services.bills
    if service is None:
        raise ApiError(ErrorCode.INTERNAL, "bill reconciliation is not running in this process")
    return service, principal


@strawberry.type(description="The bill's own summary lines, in fen.")
class BillSummary:
    payment_count: int
    payment_fen: int
    refund_count: int
    refund_fen: int
    fee_fen: int = strawberry.field(description="Net: fees charged minus fees refunds returned.")


@strawberry.type(description="What the run matched and what the bill adds up to, in fen.")
class ReconciliationTotals:
    bill_lines: int = strawberry.field(description="Lines read from the bill.")
    matched_count: int = strawberry.field(description="Bill lines that agree with our records.")
    matched_fen: int
    payment_count: int = strawberry.field(description="Payment lines on the bill.")
    payment_fen: int
    refund_count: int = strawberry.field(description="Refund lines on the bill.")
    refund_fen: int
    fee_fen: int = strawberry.field(description="The lines' fees, net of fees refunds returned.")
    bill: BillSummary | None = strawberry.field(
        description="The bill's own summary lines; null when the file has none."
    )
    bill_totals_agree: bool | None = strawberry.field(
        description="Whether the lines add up to the bill's summary; null without a summary."
    )

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> ReconciliationTotals:
        summary = doc.get("bill")
        return cls(
            bill_lines=int(doc.get("billLines", 0)),
            matched_count=int(doc.get("matchedCount", 0)),
            matched_fen=int(doc.get("matchedFen", 0)),
            payment_count=int(doc.get("paymentCount", 0)),
            payment_fen=int(doc.get("paymentFen", 0)),
            refund_count=int(doc.get("refundCount", 0)),
            refund_fen=int(doc.get("refundFen", 0)),
            fee_fen=int(doc.get("feeFen", 0)),
            bill=None
            if not summary
            else BillSummary(
                payment_count=int(summary.get("paymentCount", 0)),
                payment_fen=int(summary.get("paymentFen", 0)),
                refund_count=int(summary.get("refundCount", 0)),
                refund_fen=int(summary.get("refundFen", 0)),
                fee_fen=int(summary.get("feeFen", 0)),
            ),
            bill_totals_agree=doc.get("billTotalsAgree"),
        )


@strawberry.type(description="How many discrepancies of one kind the last run found.")
class DiscrepancyCount:
    kind: DiscrepancyKind  # type: ignore[valid-type]
    count: int


@strawberry.type(description="Who resolved a discrepancy, how and why.")
class DiscrepancyResolution:
    how: ResolutionHow = strawberry.field(
        description="APPLIED: the platform's fact was applied (a missed notification); "
        "MANUAL: a key resolved it with a note; CLEARED: a later run no longer found it."
    )
    note: str
    by: str = strawberry.field(description='The API key\'s name, or "reconciliation".')
    at: datetime


@strawberry.type(description="One line of disagreement between a bill and our records.")
class Discrepancy:
    id: strawberry.ID
    reconciliation_id: strawberry.ID
    branch: str
    provider: str
    bill_date: date = strawberry.field(description="The Beijing day of the bill.")
    kind: DiscrepancyKind  # type: ignore[valid-type]
    out_trade_no: str
    out_refund_no: str | None = strawberry.field(description="Set for a refund line.")
    provider_trade_no: str | None
    bill_amount_fen: int | None = strawberry.field(description="Null: not on the bill.")
    our_amount_fen: int | None = strawberry.field(description="Null: not in our records.")
    bill_status: str | None
    our_status: str | None
    occurred_at: datetime | None = strawberry.field(
        description="When the platform (or, for MISSING_ON_PLATFORM, we) completed it."
    )
    detected_at: datetime = strawberry.field(description="When a run first found it.")
    open: bool
    age_days: int = strawberry.field(description="Beijing days since it was detected.")
    stale: bool = strawberry.field(
        description="Open and older than BRANCHPAY_DISCREPANCY_STALE_DAYS days."
    )
    resolution: DiscrepancyResolution | None

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> Discrepancy:
        resolution = doc.get("resolution")
        return cls(
            id=strawberry.ID(doc["_id"]),
            reconciliation_id=strawberry.ID(doc["reconciliationId"]),
            branch=doc["branch"],
            provider=doc["provider"],
            bill_date=date.fromisoformat(doc["billDate"]),
            kind=DomainDiscrepancyKind(doc["kind"]),
            out_trade_no=doc["outTradeNo"],
            out_refund_no=doc.get("outRefundNo") or None,
            provider_trade_no=doc.get("providerTradeNo"),
            bill_amount_fen=doc.get("billAmountFen"),
            our_amount_fen=doc.get("ourAmountFen"),
            bill_status=doc.get("billStatus"),
            our_status=doc.get("ourStatus"),
            occurred_at=doc.get("occurredAt"),
            detected_at=doc["detectedAt"],
            open=bool(doc.get("open")),
            age_days=int(doc.get("ageDays", 0)),
            stale=bool(doc.get("stale")),
            resolution=None
            if not resolution
            else DiscrepancyResolution(
                how=ResolutionHow(resolution["how"]),
                note=resolution.get("note", ""),
                by=resolution.get("by", ""),
                at=resolution["at"],
            ),
        )


@strawberry.type
class DiscrepancyEdge:
    cursor: str
    node: Discrepancy


@strawberry.type(description="A page of a reconciliation's discrepancies, in id order.")
class DiscrepancyConnection:
    edges: list[DiscrepancyEdge]
    nodes: list[Discrepancy]
    page_info: PageInfo


@strawberry.type(
    description="One run of one bill: a branch, a provider and a Beijing bill day. "
    "A re-run replaces it (same id); its discrepancies keep their ids."
)
class Reconciliation:
    id: strawberry.ID = strawberry.field(
        description="Written `{branch}:{provider}:{YYYY-MM-DD}`, e.g. `zj:alipay:2026-12-01`."
    )
    branch: str
    provider: str
    bill_date: date = strawberry.field(description="The Beijing day of the bill.")
    status: ReconciliationStatus
    error: str | None = strawberry.field(
        description="Why a FAILED run failed, as `CODE: message` (no secret in it)."
    )
    runs: int = strawberry.field(description="How many runs reconciled this bill so far.")
    started_at: datetime | None
    finished_at: datetime | None
    totals: ReconciliationTotals
    discrepancy_counts: list[DiscrepancyCount] = strawberry.field(
        description="Every kind, with its count (open or resolved, not CLEARED; 0 included)."
    )
    open_discrepancies: int

    @strawberry.field(description="Its discrepancies, in id order; `first` at most 100.")
    async def discrepancies(
        self,
        info: Info[Context, None],
        first: int | None = None,
        after: str | None = None,
        kind: DiscrepancyKind | None = None,  # type: ignore[valid-type]
        open: bool | None = None,
    ) -> DiscrepancyConnection:
        service, principal = _reconcile(info)
        settings = info.context.services.settings
        limit = settings.default_page_size if first is None else first
        if not 0 <= limit <= settings.max_page_size:
            raise bad_input(f"first must be between 0 and {settings.max_page_size}")
        if after is not None and (
            DISCREPANCIES_CURSOR.problem(after, "after") is not None
            or not after.startswith(f"{self.id}:")
        ):
            raise bad_input("malformed cursor: pass endCursor from discrepancies")
        docs: list[Document] = []
        more = False
        if limit:
            docs, more = await service.discrepancies(
                principal,
                str(self.id),
                first=limit,
                after=after,
                kind=None if kind is None else DomainDiscrepancyKind(kind).value,
                open=open,
            )
        nodes = [Discrepancy.from_doc(doc) for doc in docs]
        edges = [DiscrepancyEdge(cursor=str(node.id), node=node) for node in nodes]
        return DiscrepancyConnection(
            edges=edges,
            nodes=nodes,
            page_info=PageInfo(
                has_next_page=more,
                has_previous_page=after is not None,
                start_cursor=edges[0].cursor if edges else None,
                end_cursor=edges[-1].cursor if edges else after,
            ),
        )

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> Reconciliation:
        counts = doc.get("discrepancyCounts") or {}
        return cls(
            id=strawberry.ID(doc["_id"]),
            branch=doc["branch"],
            provider=doc["provider"],
            bill_date=date.fromisoformat(doc["billDate"]),
            status=ReconciliationStatus(doc["status"]),
            error=doc.get("error"),
            runs=int(doc.get("runs", 0)),
            started_at=doc.get("startedAt"),
            finished_at=doc.get("finishedAt"),
            totals=ReconciliationTotals.from_doc(doc.get("totals") or {}),
            discrepancy_counts=[
                DiscrepancyCount(kind=kind, count=int(counts.get(kind.value, 0)))
                for kind in DomainDiscrepancyKind
            ],
            open_discrepancies=int(doc.get("openDiscrepancies", 0)),
        )


@strawberry.input
class ResolveDiscrepancyInput:
    id: strawberry.ID = strawberry.field(description="A discrepancy's id.")
    note: str = strawberry.field(description="Why it is resolved; kept in the audit log.")


@strawberry.type
class ResolveDiscrepancyPayload:
    discrepancy: Discrepancy | None
    user_errors: list[UserError]


def _days(from_day: date | None, to_day: date | None) -> tuple[date, date]:
    """The window of bill days asked for; BAD_USER_INPUT when it is empty or too wide."""
    last = to_day or beijing_day(datetime.now(UTC))
    first = from_day or last - timedelta(days=DEFAULT_RECONCILIATION_DAYS - 1)
    if first > last:
        raise bad_input("from must not be after to")
    if (last - first).days >= MAX_RECONCILIATION_DAYS:
        raise bad_input(f"from and to may span at most {MAX_RECONCILIATION_DAYS} days")
    return first, last


@strawberry.type
class BillQuery:
    @strawberry.field(
        description="The reconciliations of bill days from `from` to `to` (Beijing days, both "
        f"included; by default the {DEFAULT_RECONCILIATION_DAYS} days up to today, at most "
        f"{MAX_RECONCILIATION_DAYS}), newest first (ops, branch_admin)."
    )
    async def reconciliations(
        self,
        info: Info[Context, None],
        branch: str | None = None,
        provider: str | None = None,
        from_: Annotated[date | None, strawberry.argument(name="from")] = None,
        to: date | None = None,
    ) -> list[Reconciliation]:
        service, principal = _reconcile(info)
        if branch is not None and (why := BRANCH_CODE.problem(branch, "branch")) is not None:
            raise bad_input(why)
        if provider is not None and (why := PROVIDER.problem(provider, "provider")) is not None:
            raise bad_input(why)
        first, last = _days(from_, to)
        try:
            docs = await service.reconciliations(
                principal, branch=branch, provider=provider, from_day=first, to_day=last
            )
        except ServiceError as refused:
            raise bad_input(refused.problem.message) from None
        return [Reconciliation.from_doc(doc) for doc in docs]

    @strawberry.field(description='One reconciliation by its id, "{branch}:{provider}:{day}".')
    async def reconciliation(
        self, info: Info[Context, None], id: strawberry.ID
    ) -> Reconciliation | None:
        service, principal = _reconcile(info)
        if (why := RECONCILIATION_ID.problem(str(id), "id")) is not None:
            raise bad_input(why)
        doc = await service.reconciliation(principal, str(id))
        return Reconciliation.from_doc(doc) if doc else None


@strawberry.type
class BillMutation:
    @strawberry.mutation(
        description="Close an open discrepancy with a note (ops, branch_admin); audited."
    )
    async def resolve_discrepancy(
        self, info: Info[Context, None], input: ResolveDiscrepancyInput
    ) -> ResolveDiscrepancyPayload:
        service, principal = _reconcile(info)
        try:
            if RECONCILIATION_ID.problem(str(input.id), "id") is not None:
                # Never an id the API returned: no such discrepancy.
                raise ServiceError(
                    UserErrorCode.DISCREPANCY_NOT_FOUND, "no discrepancy with that id", ("id",)
                )
            doc = await service.resolve(principal, str(input.id), input.note)
        except ServiceError as refused:
            return ResolveDiscrepancyPayload(
                discrepancy=None, user_errors=user_errors([refused.problem])
            )
        return ResolveDiscrepancyPayload(discrepancy=Discrepancy.from_doc(doc), user_errors=[])
