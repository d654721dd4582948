"""Daily bill reconciliation (对账): every line of a platform's bill against our records.

:meth:`BillReconciliation.run` reconciles one (branch, provider, Beijing day):

1. the provider downloads the day's bill into an anonymous temporary file
   (deleted when the run ends, whatever happens);
2. the provider's reader streams it; lines are taken ``batch_lines`` at a time
   in a worker thread, so parsing never stalls the event loop, and each batch
   costs one store query for our attempts (``$in`` on outTradeNo within the
   branch and provider) and one bulk write of what it found;
3. our paid attempts and succeeded refund lines of the day window that the
   bill lacks are read with a streamed cursor (MISSING_ON_PLATFORM);
4. discrepancies are upserted under deterministic ids (a re-run finds the same
   ones, never a second set); open ones not found again are CLEARED; the
   reconciliation document is stored with the totals.

What a run keeps in memory per line is a 128-bit digest of each bill line's
key (kind, outTradeNo, outRefundNo) in a set, for duplicate detection and for
telling which of our records the bill holds: about 80 bytes a line, so a bill
of a million lines takes about 80 MB; everything else is per batch.

A missed notification (the bill says paid, we hold the attempt PENDING; the
bill shows a refund we hold PENDING) is resolved in the run: the platform is
queried and its answer applied through the payment service's exactly-once path
(a pending refund is resubmitted, as ``reconcile`` does); once our record
agrees the discrepancy is stored closed, ``resolution.how = APPLIED``.

Runs of the same reconciliation are serialised across processes by a lease on
its id (api/store/leases.py): a second run that starts while one is going waits
for it and returns the stored result of that run instead of running again.
:meth:`BillReconciliation.run_due` is the scheduled daily pass, once per cluster
under a lease of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from itertools import islice
from typing import IO, Any, BinaryIO, cast

from api.config.live import ProviderRegistry
from api.domain.beijing import BEIJING
from api.domain.bills import (
    BillLine,
    BillLineKind,
    BillTotals,
    BillUnavailableReason,
    DiscrepancyKind,
    OurRecord,
    age_in_days,
    beijing_day,
    discrepancy_id,
    is_stale,
    judge,
    mark_id,
    missing_window,
    needs_mark,
    reconciliation_id,
    succeeded,
)
from api.domain.principal import Permission, Principal, Role
from api.domain.problems import ServiceError, UserErrorCode
from api.domain.text import BRANCH_CODE, DISCREPANCY_NOTE, PROVIDER, quoted
from api.plugins.contract import BillRejected, BillUnavailable, GatewayError, Provider
from api.services.payments import PaymentService
from api.store import Store
from api.store.audit import AuditAction
from api.telemetry import metrics

__all__ = [
    "SYSTEM",
    "BillReconciliation",
    "BillSettings",
    "ReconciliationStatus",
    "ServiceError",
    "age_days",
]

Document = dict[str, Any]
Progress = Callable[[str, int], None]
log = logging.getLogger("branchpay.bills")

# Who the scheduled run and the run's own resolutions are recorded as.
SYSTEM = Principal("reconciliation", Role.OPS, frozenset())


class ReconciliationStatus:
    COMPLETE = "COMPLETE"
    NOT_READY = "NOT_READY"
    NO_BILL = "NO_BILL"
    FAILED = "FAILED"


@dataclass(frozen=True, slots=True)
class BillSettings:
    """How reconciliation runs; built from the ``bill_*`` settings (api/web/app.py)."""

    tolerance: timedelta = timedelta(seconds=300)
    stale_days: int = 3
    daily: bool = True
    daily_at: time = time(10, 0)  # Beijing time
    batch_lines: int = 1000
    lease: timedelta = timedelta(seconds=60)
    lease_poll_seconds: float = 0.2
    retry_after: timedelta = timedelta(minutes=30)  # NOT_READY and FAILED days, in run_due


def age_days(doc: Mapping[str, Any], now: datetime) -> int:
    """Beijing days a discrepancy was open: until now, or until it was resolved."""
    resolution = doc.get("resolution")
    until = resolution["at"] if resolution else now
    return age_in_days(doc["detectedAt"], until)


def _digest(key: tuple[str, str, str]) -> int:
    return int.from_bytes(hashlib.blake2b("\x1f".join(key).encode(), digest_size=16).digest())


def _take(lines: Iterator[BillLine | BillTotals], count: int) -> list[BillLine | BillTotals]:
    return list(islice(lines, count))


class _Counting:
    """The download's destination: the temporary file, counting bytes for ``progress``."""

    def __init__(self, file: IO[bytes], progress: Progress | None) -> None:
        self._file = file
        self._progress = progress
        self.written = 0

    def write(self, data: bytes) -> int:
        written = self._file.write(data)
        self.written += written
        if self._progress is not None:
            self._progress("download", self.written)
        return written

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)


@dataclass
class _Run:
    """What one run keeps: the digests of the bill's keys, the duplicates, the sums."""

    reconciliation: str
    branch: str
    provider: str
    day: date
    token: str
    now: datetime
    seen: set[int] = field(default_factory=set)
    duplicated: set[tuple[str, str, str]] = field(default_factory=set)
    lines: int = 0
    matched_count: int = 0
    matched_fen: int = 0
    payment_count: int = 0
    payment_fen: int = 0
    refund_count: int = 0
    refund_fen: int = 0
    fee_fen: int = 0
    bill: BillTotals | None = None

    def count(self, line: BillLine) -> None:
        self.lines += 1
        self.fee_fen += line.fee_fen
        if line.kind is BillLineKind.PAYMENT:
            self.payment_count += 1
            self.payment_fen += line.amount_fen
        else:
            self.refund_count += 1
            self.refund_fen += line.amount_fen

    def totals(self) -> Document:
        sums = {
            "paymentCount": self.payment_count,
            "paymentFen": self.payment_fen,
            "refundCount": self.refund_count,
            "refundFen": self.refund_fen,
            "feeFen": self.fee_fen,
        }
        bill = None if self.bill is None else _bill_totals(self.bill)
        return {
            "billLines": self.lines,
            "matchedCount": self.matched_count,
            "matchedFen": self.matched_fen,
            **sums,
            "bill": bill,
            "billTotalsAgree": None if bill is None else bill == sums,
        }


def _bill_totals(totals: BillTotals) -> Document:
    return {
        "paymentCount": totals.payment_count,
        "paymentFen": totals.payment_fen,
        "refundCount": totals.refund_count,
        "refundFen": totals.refund_fen,
        "feeFen": totals.fee_fen,
    }


def _our_payment(doc: Mapping[str, Any]) -> OurRecord:
    return OurRecord(
        BillLineKind.PAYMENT,
        doc["outTradeNo"],
        int(doc["amountFen"]),
        doc["status"],
        doc.get("paidAt"),
    )


def _our_refund(doc: Mapping[str, Any], out_refund_no: str) -> OurRecord | None:
    for line in doc.get("refunds", []):
        if line["outRefundNo"] == out_refund_no:
            at = line.get("updatedAt") if line["status"] == "SUCCEEDED" else None
            return OurRecord(
                BillLineKind.REFUND,
                doc["outTradeNo"],
                int(line["amountFen"]),
                line["status"],
                at,
                out_refund_no=out_refund_no,
            )
    return None


def _our_record(line: BillLine, attempt: Mapping[str, Any] | None) -> OurRecord | None:
    if attempt is None:
        return None
    if line.kind is BillLineKind.PAYMENT:
        return _our_payment(attempt)
    return _our_refund(attempt, line.out_refund_no or "")


class BillReconciliation:
    def __init__(
        self,
        store: Store,
        registry: ProviderRegistry,
        payments: PaymentService,
        *,
        settings: BillSettings | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.registry = registry
        self.payments = payments
        self.settings = settings or BillSettings()
        self.clock = clock
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    def now(self) -> datetime:
        now = self.clock()
        return now.replace(microsecond=(now.microsecond // 1000) * 1000)  # BSON keeps ms

    # --- who may reconcile what ---------------------------------------------------------

    @staticmethod
    def _require(principal: Principal) -> None:
        if not principal.may(Permission.RECONCILE):
            raise PermissionError(f"role {principal.role.value} may not reconcile bills")

    def _branch(self, principal: Principal, branch: str) -> None:
        if self.registry.branch(branch) is None or not principal.sees_branch(branch):
            raise ServiceError(
                UserErrorCode.UNKNOWN_BRANCH,
                f"no branch {quoted(branch, BRANCH_CODE)}",
                ("branch",),
            )

    def _bill_provider(self, principal: Principal, branch: str, name: str) -> Provider:
        self._require(principal)
        self._branch(principal, branch)
        enabled = {cls.name for cls in self.registry.enabled(branch)}
        instance = self.registry.provider(branch, name) if name in enabled else None
        if instance is None:
            raise ServiceError(
                UserErrorCode.PROVIDER_NOT_ENABLED,
                f"branch {branch} does not enable the provider {quoted(name, PROVIDER)}",
                ("provider",),
            )
        if not instance.supports_bills:
            raise ServiceError(
                UserErrorCode.BILLS_NOT_SUPPORTED,
                f"the provider {name} cannot download daily bills",
                ("provider",),
            )
        return instance

    def _check_day(self, day: date) -> None:
        if day > beijing_day(self.now()):
            raise ServiceError(
                UserErrorCode.INVALID_DATE,
                f"{day.isoformat()} is in the future (Beijing time)",
                ("date",),
            )

    def _pairs(
        self, principal: Principal, branch: str | None, provider: str | None
    ) -> list[tuple[str, str, Provider]]:
        """(branch, provider name, instance) of every enabled bill-capable provider in scope."""
        if branch is not None:
            self._branch(principal, branch)
            branches = [branch]
        else:
            branches = principal.visible(None, self.registry.config.branches)
        pairs = []
        for code in branches:
            for cls in self.registry.enabled(code):
                if provider is not None and cls.name != provider:
                    continue
                instance = self.registry.provider(code, cls.name)
                if instance is not None and instance.supports_bills:
                    pairs.append((code, cls.name, instance))
        return pairs

    # --- running ----------------------------------------------------------------------

    async def run(
        self,
        principal: Principal,
        *,
        branch: str,
        provider: str,
        day: date,
        progress: Progress | None = None,
    ) -> Document:
        """Reconcile the bill of ``day``; the stored reconciliation after the run."""
        instance = self._bill_provider(principal, branch, provider)
        self._check_day(day)
        return await self._run_once(instance, branch, provider, day, progress)

    async def run_all(
        self,
        principal: Principal,
        *,
        day: date,
        branch: str | None = None,
        provider: str | None = None,
        progress: Progress | None = None,
    ) -> list[Document]:
        """Reconcile every (branch, provider) in scope with a bill-capable provider enabled."""
        self._require(principal)
        if branch is not None and provider is not None:
            self._bill_provider(principal, branch, provider)
        self._check_day(day)
        return [
            await self._run_once(instance, code, name, day, progress)
            for code, name, instance in self._pairs(principal, branch, provider)
        ]

    async def run_due(self) -> None:
        """The scheduled pass: yesterday's bills once past ``daily_at`` (Beijing), once per cluster.

        A day already COMPLETE or NO_BILL is left alone; NOT_READY and FAILED
        are tried again ``retry_after`` after the last try.
        """
        if not self.settings.daily:
            return
        now = self.now()
        local = now.astimezone(BEIJING)
        if local.time() < self.settings.daily_at:
            return
        day = local.date() - timedelta(days=1)
        name, owner = "bill-reconcile-due", f"{self.owner}:due"
        if not await self.store.leases.acquire(name, owner, self.settings.lease, now):
            return
        async with self._renewing(name, owner):
            for code, provider, instance in self._pairs(SYSTEM, None, None):
                stored = await self.store.bills.reconciliation(
                    reconciliation_id(code, provider, day)
                )
                if stored is not None and not self._try_again(stored, now):
                    continue
                done = await self._run_once(instance, code, provider, day, None)
                log.info(
                    "bill reconciliation %s: %s, %d open discrepancies",
                    done["_id"],
                    done["status"],
                    done.get("openDiscrepancies", 0),
                )

    def _try_again(self, stored: Mapping[str, Any], now: datetime) -> bool:
        if stored["status"] not in (ReconciliationStatus.NOT_READY, ReconciliationStatus.FAILED):
            return False
        return bool(stored["finishedAt"] <= now - self.settings.retry_after)

    @contextlib.asynccontextmanager
    async def _renewing(self, name: str, owner: str) -> AsyncIterator[None]:
        """Hold the lease taken as ``name`` while the body runs, then release it."""

        async def renew() -> None:
            while True:
                await asyncio.sleep(self.settings.lease.total_seconds() / 3)
                if not await self.store.leases.renew(name, owner, self.settings.lease, self.now()):
                    log.warning("lease %s was lost while held", name)

        task = asyncio.create_task(renew(), name=f"lease {name}")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await self.store.leases.release(name, owner)

    async def _run_once(
        self,
        instance: Provider,
        branch: str,
        provider: str,
        day: date,
        progress: Progress | None,
    ) -> Document:
        """Run under the reconciliation's lease; a run that waited returns the other's result."""
        rec_id = reconciliation_id(branch, provider, day)
        name, owner = f"reconciliation:{rec_id}", f"{self.owner}:{uuid.uuid4().hex}"
        asked = self.now()
        waited = False
        while not await self.store.leases.acquire(name, owner, self.settings.lease, self.now()):
            waited = True
            await asyncio.sleep(self.settings.lease_poll_seconds)
        async with self._renewing(name, owner):
            if waited:
                done = await self.store.bills.reconciliation(rec_id)
                if done is not None and done["finishedAt"] >= asked:
                    return done
            return await self._run(instance, branch, provider, day, progress)

    async def _run(
        self,
        instance: Provider,
        branch: str,
        provider: str,
        day: date,
        progress: Progress | None,
    ) -> Document:
        rec_id = reconciliation_id(branch, provider, day)
        started = self.now()
        previous = await self.store.bills.reconciliation(rec_id)
        run = _Run(rec_id, branch, provider, day, uuid.uuid4().hex, started)
        status, error = ReconciliationStatus.COMPLETE, None
        try:
            with tempfile.TemporaryFile() as file:
                try:
                    with metrics.gateway_call(provider, "bill"):
                        await instance.download_bill(day, cast(BinaryIO, _Counting(file, progress)))
                except BillUnavailable as unavailable:
                    if unavailable.reason is BillUnavailableReason.NOT_READY:
                        status = ReconciliationStatus.NOT_READY
                    else:
                        status = ReconciliationStatus.NO_BILL
                else:
                    file.seek(0)
                    await self._match_bill(instance, cast(BinaryIO, file), run, progress)
            if status != ReconciliationStatus.NOT_READY:
                # NO_BILL: every succeeded record of ours in the window is missing on the bill.
                await self._missing_on_platform(run)
                await self.store.bills.clear_vanished(
                    rec_id, run.token, self._resolution("CLEARED", "not found again", self.now())
                )
        except BillRejected as rejected:
            status, error = ReconciliationStatus.FAILED, f"BILL_REJECTED: {_short(rejected)}"
        except GatewayError as failed:
            status, error = ReconciliationStatus.FAILED, f"GATEWAY_ERROR: {_short(failed)}"
        except Exception as failure:
            # One (branch, provider, day) failing must not stop the scheduler's others.
            log.exception("bill reconciliation %s failed", rec_id)
            status, error = ReconciliationStatus.FAILED, f"INTERNAL: {type(failure).__name__}"
        if error is not None:
            log.warning("bill reconciliation %s failed: %s", rec_id, error)
        document: Document = {
            "_id": rec_id,
            "branch": branch,
            "provider": provider,
            "billDate": day.isoformat(),
            "status": status,
            "error": error,
            "runs": int((previous or {}).get("runs", 0)) + 1,
            "startedAt": started,
            "finishedAt": self.now(),
            "totals": run.totals(),
            "discrepancyCounts": await self.store.bills.count_by_kind(rec_id),
            "openDiscrepancies": await self.store.bills.count_open(rec_id),
        }
        await self.store.bills.save(document)
        return document

    # --- matching ---------------------------------------------------------------------

    async def _match_bill(
        self, instance: Provider, file: BinaryIO, run: _Run, progress: Progress | None
    ) -> None:
        reader = instance.read_bill(file)
        while batch := await asyncio.to_thread(_take, reader, self.settings.batch_lines):
            lines = []
            for item in batch:
                if isinstance(item, BillTotals):
                    run.bill = item
                else:
                    lines.append(item)
            await self._match_batch(instance, lines, run)
            if progress is not None:
                progress("match", run.lines)

    async def _match_batch(self, instance: Provider, lines: Sequence[BillLine], run: _Run) -> None:
        found: list[Document] = []
        fresh: list[BillLine] = []
        for line in lines:
            run.count(line)
            digest = _digest(line.key)
            if digest in run.seen:
                if line.key not in run.duplicated:
                    run.duplicated.add(line.key)
                    found.append(self._found(run, DiscrepancyKind.DUPLICATE_ON_BILL, line, None))
                continue
            run.seen.add(digest)
            fresh.append(line)
        bills = self.store.bills
        attempts = await bills.attempts(
            run.branch, run.provider, sorted({line.out_trade_no for line in fresh})
        )
        marks: list[str] = []
        applied: list[str] = []
        for line in fresh:
            attempt = attempts.get(line.out_trade_no)
            ours = _our_record(line, attempt)
            verdict = judge(line, ours)
            if verdict.resolvable and attempt is not None:
                fixed = await self._resolve_missed(instance, line, attempt)
                if fixed is not None:
                    # The discrepancy keeps what we held when the bill disagreed (PENDING).
                    held, ours, verdict = ours, fixed, judge(line, fixed)
                    status_id = discrepancy_id(
                        run.reconciliation, DiscrepancyKind.STATUS_MISMATCH, line.key
                    )
                    doc = self._found(run, DiscrepancyKind.STATUS_MISMATCH, line, held)
                    doc["open"] = False
                    doc["resolution"] = self._resolution(
                        "APPLIED", "the platform's fact was applied", self.now()
                    )
                    found.append(doc)
                    applied.append(status_id)
            if ours is not None and needs_mark(ours.at, run.day, self.settings.tolerance):
                marks.append(mark_id(run.branch, run.provider, line.key))
            if verdict.matched:
                run.matched_count += 1
                run.matched_fen += line.amount_fen
                continue
            found.extend(self._found(run, kind, line, ours) for kind in verdict.kinds)
        await bills.add_marks(run.branch, marks, run.day, run.now)
        await bills.record_discrepancies(found, run.token)
        await bills.close_applied(applied, self._resolution("APPLIED", "applied", self.now()))

    async def _resolve_missed(
        self, instance: Provider, line: BillLine, attempt: Document
    ) -> OurRecord | None:
        """Settle a missed notification; our record once it agrees with the bill, else None."""
        try:
            if line.kind is BillLineKind.PAYMENT:
                result = await instance.query(attempt["outTradeNo"])
                await self.payments.apply_query(attempt, result)
            else:
                await self.payments.submit_refund(attempt["_id"], line.out_refund_no or "")
        except Exception as error:
            log.warning(
                "bill line %s: asking the platform failed (%s)",
                line.out_trade_no,
                type(error).__name__,
            )
            return None
        fresh = await self.store.payments.get(attempt["_id"])
        ours = _our_record(line, fresh)
        if ours is None or DiscrepancyKind.STATUS_MISMATCH in judge(line, ours).kinds:
            return None
        return ours

    async def _missing_on_platform(self, run: _Run) -> None:
        """Our succeeded records of the day window the bill lacks, unless billed on another day."""
        start, end = missing_window(run.day, self.settings.tolerance)
        bills = self.store.bills
        pending: list[OurRecord] = []

        async def flush() -> None:
            keys = {mark_id(run.branch, run.provider, r.key): r for r in pending}
            billed = await bills.marked_on_other_days(list(keys), run.day)
            found = [
                self._found(run, DiscrepancyKind.MISSING_ON_PLATFORM, None, record)
                for mark, record in keys.items()
                if mark not in billed
            ]
            await bills.record_discrepancies(found, run.token)
            pending.clear()

        async for doc in bills.paid_between(run.branch, run.provider, start, end):
            record = _our_payment(doc)
            if succeeded(record) and _digest(record.key) not in run.seen:
                pending.append(record)
                if len(pending) >= self.settings.batch_lines:
                    await flush()
        async for doc in bills.refunded_between(run.branch, run.provider, start, end):
            for line in doc.get("refunds", []):
                refund = _our_refund(doc, line["outRefundNo"])
                if refund is None or refund.at is None or not start <= refund.at < end:
                    continue
                if _digest(refund.key) not in run.seen:
                    pending.append(refund)
            if len(pending) >= self.settings.batch_lines:
                await flush()
        await flush()

    def _found(
        self,
        run: _Run,
        kind: DiscrepancyKind,
        line: BillLine | None,
        ours: OurRecord | None,
    ) -> Document:
        source = line or ours
        assert source is not None
        key = source.key
        return {
            "_id": discrepancy_id(run.reconciliation, kind, key),
            "reconciliationId": run.reconciliation,
            "branch": run.branch,
            "provider": run.provider,
            "billDate": run.day.isoformat(),
            "kind": kind.value,
            "lineKind": key[0],
            "outTradeNo": key[1],
            "outRefundNo": key[2] or None,
            "providerTradeNo": line.provider_trade_no if line else None,
            "billAmountFen": line.amount_fen if line else None,
            "ourAmountFen": ours.amount_fen if ours else None,
            "billStatus": line.status.value if line else None,
            "ourStatus": ours.status if ours else None,
            "occurredAt": line.occurred_at if line else (ours.at if ours else None),
            "detectedAt": run.now,
            "open": True,
            "resolution": None,
        }

    @staticmethod
    def _resolution(how: str, note: str, at: datetime, by: str = SYSTEM.name) -> Document:
        return {"how": how, "note": note, "by": by, "at": at}

    # --- reading ----------------------------------------------------------------------

    async def reconciliations(
        self,
        principal: Principal,
        *,
        branch: str | None,
        provider: str | None,
        from_day: date,
        to_day: date,
    ) -> list[Document]:
        """The stored reconciliations in scope from ``from_day`` to ``to_day`` (both included)."""
        self._require(principal)
        if to_day < from_day:
            raise ServiceError(
                UserErrorCode.INVALID_DATE,
                f"the range ends ({to_day.isoformat()}) before it starts ({from_day.isoformat()})",
                ("to",),
            )
        if branch is not None:
            self._branch(principal, branch)
            branches = [branch]
        else:
            branches = principal.visible(None, self.registry.config.branches)
        return await self.store.bills.between(branches, provider, from_day, to_day)

    async def reconciliation(self, principal: Principal, reconciliation_id: str) -> Document | None:
        """One stored reconciliation; None when there is none, or not in the key's scope."""
        self._require(principal)
        doc = await self.store.bills.reconciliation(reconciliation_id)
        if doc is None or not principal.may_on(Permission.RECONCILE, doc["branch"]):
            return None
        return doc

    async def discrepancies(
        self,
        principal: Principal,
        reconciliation_id: str,
        *,
        first: int,
        after: str | None,
        kind: str | None,
        open: bool | None,
    ) -> tuple[list[Document], bool]:
        """A page of the reconciliation's discrepancies by id, and whether more follow."""
        if first < 1:
            raise ValueError("first must be positive")
        if kind is not None:
            DiscrepancyKind(kind)
        if await self.reconciliation(principal, reconciliation_id) is None:
            return [], False
        docs, more = await self.store.bills.discrepancies_page(
            reconciliation_id, first=first, after=after, kind=kind, open_only=open
        )
        now = self.now()
        return [self._aged(doc, now) for doc in docs], more

    def _aged(self, doc: Document, now: datetime) -> Document:
        age = age_days(doc, now)
        return {
            **doc,
            "ageDays": age,
            "stale": bool(doc["open"]) and is_stale(age, self.settings.stale_days),
        }

    # --- resolving --------------------------------------------------------------------

    async def resolve(self, principal: Principal, discrepancy_id: str, note: str) -> Document:
        """Close an open discrepancy by hand with a note; audited."""
        self._require(principal)
        if (why := DISCREPANCY_NOTE.problem(note, "note")) is not None:
            raise ServiceError(UserErrorCode.INVALID_NOTE, why, ("note",))
        doc = await self.store.bills.discrepancy(discrepancy_id)
        if doc is None or not principal.may_on(Permission.RECONCILE, doc["branch"]):
            raise ServiceError(
                UserErrorCode.DISCREPANCY_NOT_FOUND, "no discrepancy with that id", ("id",)
            )
        now = self.now()
        resolved = None
        if doc["open"]:
            resolved = await self.store.bills.resolve(
                discrepancy_id, self._resolution("MANUAL", note, now, principal.name)
            )
        if resolved is None:
            raise ServiceError(
                UserErrorCode.DISCREPANCY_RESOLVED, "the discrepancy is resolved already", ("id",)
            )
        await self.store.audit.record(
            principal.name,
            AuditAction.DISCREPANCY_RESOLVED,
            discrepancy_id,
            {
                "kind": resolved["kind"],
                "reconciliationId": resolved["reconciliationId"],
                "note": note,
            },
            branch=resolved["branch"],
        )
        rec_id = resolved["reconciliationId"]
        await self.store.bills.set_open_count(rec_id, await self.store.bills.count_open(rec_id))
        return self._aged(resolved, now)


def _short(error: Exception) -> str:
    return str(error)[:200]
