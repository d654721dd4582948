"""``branchpay reconcile bills``: reconcile the platforms' bills of one Beijing day, by hand.

It runs what the daily schedule runs (api/services/bills.py) for every branch
and bill-capable provider enabled in plugins.toml, or the ones named, against
the store the other admin commands use. A progress bar on stderr follows the
download (bytes) and the matching (lines); stdout holds only the report, as a
table, JSON or CSV, so it can be piped. The OS user runs it with the rights
of an ``ops`` key and is named in the audit log.

Exit codes (docs/reconciliation.md):

- 0: every bill was reconciled and no open discrepancy remains;
- 1: every bill was reconciled, and open discrepancies remain;
- 2: refused input (a bad ``--date``, an unknown branch or provider): nothing ran;
- 3: a bill could not be reconciled (NOT_READY: not published yet; FAILED: the
  download or the file failed); open discrepancies of the others may remain too.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import enum
import getpass
import json
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, TextIO

from rich.console import Console
from rich.table import Table
from rich.text import Text

from api.domain.bills import beijing_day, fen_to_yuan
from api.domain.problems import UserErrorCode
from api.domain.text import BRANCH_CODE, PROVIDER, quoted

Document = dict[str, Any]

OPEN_PAGE = 100  # open discrepancies read per page
DATE_SHOWN = 20  # characters of a bad --date repeated in the message


class ExitCode(enum.IntEnum):
    """What ``branchpay reconcile bills`` exits with; docs/reconciliation.md has the same table."""

    RECONCILED = 0  # every bill reconciled, no open discrepancy
    OPEN_DISCREPANCIES = 1  # every bill reconciled, open discrepancies remain
    REFUSED = 2  # bad arguments: nothing ran
    NOT_RECONCILED = 3  # a bill not published yet (NOT_READY) or FAILED


class BillCliCode(enum.StrEnum):
    """Every code the command reports with exit code 2, spelled as the API spells it."""

    UNKNOWN_BRANCH = UserErrorCode.UNKNOWN_BRANCH.value  # --branch names no branch
    INVALID_DATE = UserErrorCode.INVALID_DATE.value  # --date no YYYY-MM-DD day, or a future day
    PROVIDER_NOT_ENABLED = UserErrorCode.PROVIDER_NOT_ENABLED.value  # --provider enabled nowhere
    BILLS_NOT_SUPPORTED = UserErrorCode.BILLS_NOT_SUPPORTED.value  # it cannot download bills
    STORE_UNAVAILABLE = "STORE_UNAVAILABLE"  # unreachable, or no answer in time


class Refused(Exception):
    def __init__(self, code: BillCliCode, message: str) -> None:
        super().__init__(message)
        self.code = code


FORMATS = ("table", "json", "csv")
DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
# Statuses after which the bill counts as reconciled; NO_BILL: the platform had no business.
RECONCILED_STATUSES = frozenset({"COMPLETE", "NO_BILL"})
CSV_COLUMNS = (
    "reconciliationId",
    "branch",
    "provider",
    "billDate",
    "status",
    "error",
    "billLines",
    "matchedCount",
    "matchedFen",
    "openDiscrepancies",
    "discrepancyId",
    "kind",
    "outTradeNo",
    "outRefundNo",
    "providerTradeNo",
    "billAmountFen",
    "ourAmountFen",
    "billStatus",
    "ourStatus",
    "occurredAt",
    "detectedAt",
    "ageDays",
    "stale",
)


def bill_day(text: str, today: date | None = None) -> date:
    """``--date``: a Beijing day up to today, written YYYY-MM-DD; Refused otherwise."""
    shown = repr(text[:DATE_SHOWN]) + ("..." if len(text) > DATE_SHOWN else "")
    if not DAY.fullmatch(text):
        raise Refused(BillCliCode.INVALID_DATE, f"--date {shown} is not a day as YYYY-MM-DD")
    try:
        day = date.fromisoformat(text)
    except ValueError:
        raise Refused(BillCliCode.INVALID_DATE, f"--date {shown} is no calendar day") from None
    latest = today or beijing_day(datetime.now(UTC))
    if day > latest:
        raise Refused(
            BillCliCode.INVALID_DATE,
            f"--date {text} is after today ({latest.isoformat()}, Beijing time): no bill yet",
        )
    return day


def check_arguments(args: argparse.Namespace) -> date:
    """Refuse bad arguments before the store is even reached; the bill day."""
    day = bill_day(args.date)
    if args.branch is not None and BRANCH_CODE.problem(args.branch, "--branch") is not None:
        raise Refused(BillCliCode.UNKNOWN_BRANCH, f"no branch {quoted(args.branch, BRANCH_CODE)}")
    if args.provider is not None and PROVIDER.problem(args.provider, "--provider") is not None:
        raise Refused(
            BillCliCode.PROVIDER_NOT_ENABLED,
            f"no bill-capable provider {quoted(args.provider, PROVIDER)}",
        )
    return day


@dataclass
class Report:
    """The runs of one command, each with its open discrepancies."""

    day: date
    reconciliations: list[Document]
    open: dict[str, list[Document]] = field(default_factory=dict)

    @property
    def exit_code(self) -> ExitCode:
        if any(doc.get("status") not in RECONCILED_STATUSES for doc in self.reconciliations):
            return ExitCode.NOT_RECONCILED
        if any(self.open.get(doc["_id"]) for doc in self.reconciliations):
            return ExitCode.OPEN_DISCREPANCIES
        return ExitCode.RECONCILED


def _plain(value: Any) -> Any:
    """A stored value as JSON: times ISO 8601 in UTC, nested documents alike."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, Mapping):
        return {key: _plain(inner) for key, inner in value.items() if key != "_id"}
    if isinstance(value, list):
        return [_plain(inner) for inner in value]
    return value


def _reconciliation_json(doc: Mapping[str, Any], discrepancies: Iterable[Document]) -> Document:
    shown: Document = {"id": doc["_id"], **_plain(doc)}
    shown["openDiscrepancyList"] = [{"id": d["_id"], **_plain(d)} for d in discrepancies]
    return shown


def write_json(report: Report, out: TextIO) -> None:
    document = {
        "billDate": report.day.isoformat(),
        "exitCode": int(report.exit_code),
        "reconciliations": [
            _reconciliation_json(doc, report.open.get(doc["_id"], []))
            for doc in report.reconciliations
        ],
    }
    out.write(json.dumps(document, indent=2, ensure_ascii=False) + "\n")


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    plain = _plain(value)
    return plain if isinstance(plain, str) else str(plain)


def write_csv(report: Report, out: TextIO) -> None:
    """One row per open discrepancy, beside its reconciliation; one row for a run without any."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for doc in report.reconciliations:
        totals = doc.get("totals") or {}
        run = [
            doc["_id"],
            doc.get("branch"),
            doc.get("provider"),
            doc.get("billDate"),
            doc.get("status"),
            doc.get("error"),
            totals.get("billLines"),
            totals.get("matchedCount"),
            totals.get("matchedFen"),
            doc.get("openDiscrepancies"),
        ]
        found = report.open.get(doc["_id"], [])
        if not found:
            writer.writerow([_csv_cell(v) for v in run] + [""] * (len(CSV_COLUMNS) - len(run)))
        for d in found:
            line = [
                d["_id"],
                d.get("kind"),
                d.get("outTradeNo"),
                d.get("outRefundNo"),
                d.get("providerTradeNo"),
                d.get("billAmountFen"),
                d.get("ourAmountFen"),
                d.get("billStatus"),
                d.get("ourStatus"),
                d.get("occurredAt"),
                d.get("detectedAt"),
                d.get("ageDays"),
                d.get("stale"),
            ]
            writer.writerow([_csv_cell(v) for v in run + line])


def _yuan(fen: Any) -> str:
    return "" if fen is None else fen_to_yuan(int(fen))


def write_table(report: Report, console: Console) -> None:
    runs = Table(title=f"bill reconciliation of {report.day.isoformat()} (Beijing day)")
    for column in ("branch", "provider", "status", "lines", "matched", "matched ¥", "open", "note"):
        runs.add_column(
            column, justify="right" if column in ("lines", "matched", "open") else "left"
        )
    for doc in report.reconciliations:
        totals = doc.get("totals") or {}
        agree = totals.get("billTotalsAgree")
        note = doc.get("error") or (
            ""
            if agree is None
            else ("sums equal the bill's" if agree else "sums differ from the bill's")
        )
        runs.add_row(
            Text(str(doc.get("branch", ""))),
            Text(str(doc.get("provider", ""))),
            Text(str(doc.get("status", ""))),
            Text(str(totals.get("billLines", 0))),
            Text(str(totals.get("matchedCount", 0))),
            Text(_yuan(totals.get("matchedFen", 0))),
            Text(str(doc.get("openDiscrepancies", 0))),
            Text(str(note)),
        )
    console.print(runs)
    for doc in report.reconciliations:
        found = report.open.get(doc["_id"], [])
        if not found:
            continue
        table = Table(title=f"open discrepancies of {doc['_id']}")
        for column in (
            "kind",
            "outTradeNo",
            "outRefundNo",
            "bill ¥",
            "our ¥",
            "bill status",
            "our status",
            "age (days)",
        ):
            table.add_column(column)
        for d in found:
            age = str(d.get("ageDays", 0)) + (" stale" if d.get("stale") else "")
            table.add_row(
                Text(str(d.get("kind", ""))),
                Text(str(d.get("outTradeNo", ""))),
                Text(str(d.get("outRefundNo") or "")),
                Text(_yuan(d.get("billAmountFen"))),
                Text(_yuan(d.get("ourAmountFen"))),
                Text(str(d.get("billStatus") or "")),
                Text(str(d.get("ourStatus") or "")),
                Text(age),
            )
        console.print(table)
    summary = {
        ExitCode.RECONCILED: "every bill reconciled; no open discrepancy",
        ExitCode.OPEN_DISCREPANCIES: "open discrepancies remain (exit code 1)",
        ExitCode.NOT_RECONCILED: "a bill could not be reconciled (exit code 3)",
    }[report.exit_code]
    if not report.reconciliations:
        summary = "nothing to reconcile: no branch enables a provider with bills"
    console.print(summary, markup=False, highlight=False, soft_wrap=True)


def write_report(report: Report, form: str, out: TextIO) -> None:
    if form == "json":
        write_json(report, out)
    elif form == "csv":
        write_csv(report, out)
    else:
        write_table(report, Console(file=out))


Progress = Callable[[str, int], None]


def stage_text(stage: str, count: int) -> str:
    """What the progress bar says for a callback of the service."""
    if stage == "download":
        return f"downloading the bill: {count / 1_000_000:,.1f} MB"
    return f"matching: {count:,} lines"


def reconcile_bills(args: argparse.Namespace) -> int:
    from api.cli import store_uri
    from api.config.model import ConfigError
    from api.dev import devdb
    from api.settings import Settings

    err = Console(stderr=True)
    settings = Settings()
    try:
        day = check_arguments(args)
        with store_uri(settings, reuse_running=True) as uri:
            return asyncio.run(_run(settings, uri, args, day, err))
    except Refused as refusal:
        _say(err, f"error [{refusal.code}]: {refusal}")
        return int(ExitCode.REFUSED)
    except devdb.EmbeddedStoreError as error:
        _say(err, f"error [{BillCliCode.STORE_UNAVAILABLE}]: {error}")
        return int(ExitCode.REFUSED)
    except ConfigError as error:
        _say(err, f"invalid plugins configuration:\n{error}")
        return int(ExitCode.REFUSED)


def _say(console: Console, line: str) -> None:
    # Ids and messages are data: [brackets] in them must not be read as rich markup.
    console.print(line, markup=False, highlight=False, soft_wrap=True)


def _check_scope(registry: Any, branch: str | None, provider: str | None) -> None:
    """Refuse a branch or provider plugins.toml does not have, before anything runs."""
    branches = list(registry.config.branches) if branch is None else [branch]
    if branch is not None and registry.branch(branch) is None:
        raise Refused(
            BillCliCode.UNKNOWN_BRANCH,
            f"no branch {quoted(branch, BRANCH_CODE)} in {registry.path}",
        )
    if provider is None:
        if branch is not None and not any(
            found.supports_bills
            for cls in registry.enabled(branch)
            if (found := registry.provider(branch, cls.name)) is not None
        ):
            raise Refused(
                BillCliCode.PROVIDER_NOT_ENABLED,
                f"branch {branch} enables no provider that can download daily bills",
            )
        return
    enabled = [
        found for code in branches if (found := registry.provider(code, provider)) is not None
    ]
    where = f"branch {branch}" if branch else "any branch"
    if not enabled:
        raise Refused(
            BillCliCode.PROVIDER_NOT_ENABLED,
            f"provider {quoted(provider, PROVIDER)} is not enabled for {where} in {registry.path}",
        )
    if not any(found.supports_bills for found in enabled):
        raise Refused(
            BillCliCode.BILLS_NOT_SUPPORTED,
            f"provider {quoted(provider, PROVIDER)} cannot download daily bills",
        )


async def _run(settings: Any, uri: str, args: argparse.Namespace, day: date, err: Console) -> int:
    import httpx
    from pymongo.errors import PyMongoError
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from api.config.live import ProviderRegistry
    from api.domain.principal import Principal, Role
    from api.plugins.manager import ENTRY_POINT_GROUP, load_plugin_manager
    from api.services.bills import BillReconciliation
    from api.services.payments import PaymentService
    from api.store import Store, StoreTimeouts
    from api.store.marks import COLLECTION as MARKS_COLLECTION
    from api.store.marks import StoreMarks
    from api.store.outage import is_store_outage
    from api.web.app import bill_settings

    timeouts = StoreTimeouts(
        server_selection_seconds=settings.store_server_selection_timeout_seconds,
        connect_seconds=settings.store_connect_timeout_seconds,
        socket_seconds=settings.store_socket_timeout_seconds,
    )
    durability: Document = {"journal": True} if settings.store_journal else {}
    store = Store.connect(uri, settings.database, timeouts, **durability)
    plugins = load_plugin_manager()
    principal = Principal(getpass.getuser(), Role.OPS, frozenset())
    try:
        async with httpx.AsyncClient(timeout=httpx.Timeout(15.0)) as http:
            marks = store.collection(MARKS_COLLECTION)
            registry = ProviderRegistry(
                settings.plugins_toml,
                plugins,
                http,
                entry_point_group=ENTRY_POINT_GROUP,
                marks=lambda provider: StoreMarks(marks, provider),
            )
            registry.load()
            _check_scope(registry, args.branch, args.provider)
            payments = PaymentService(
                store, registry, base_url=lambda: settings.base_url, plugins=plugins
            )
            service = BillReconciliation(
                store, registry, payments, settings=bill_settings(settings)
            )
            with Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                TimeElapsedColumn(),
                console=err,
                transient=True,
            ) as progress:
                task = progress.add_task(f"reconciling the bills of {day.isoformat()}", total=None)

                def show(stage: str, count: int) -> None:
                    progress.update(task, description=stage_text(stage, count))

                docs = await service.run_all(
                    principal, day=day, branch=args.branch, provider=args.provider, progress=show
                )
            report = Report(day, list(docs))
            for doc in report.reconciliations:
                report.open[doc["_id"]] = await _open_of(service, principal, doc)
    except PyMongoError as error:
        if not is_store_outage(error):
            raise
        # Not the URI: it may hold the store's password.
        raise Refused(
            BillCliCode.STORE_UNAVAILABLE,
            f"the store did not answer in time ({type(error).__name__}); is it running, and "
            "is BRANCHPAY_MONGODB_URI right?",
        ) from None
    finally:
        await store.close()
    write_report(report, args.format, sys.stdout)
    return int(report.exit_code)


async def _open_of(service: Any, principal: Any, doc: Mapping[str, Any]) -> list[Document]:
    """Every open discrepancy of a reconciliation, page by page, in id order."""
    found: list[Document] = []
    after: str | None = None
    while True:
        page, more = await service.discrepancies(
            principal, doc["_id"], first=OPEN_PAGE, after=after, kind=None, open=True
        )
        found += page
        if not more or not page:
            return found
        after = page[-1]["_id"]
