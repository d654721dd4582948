"""docs/reconciliation.md stays true: its tables are the code's, its GraphQL runs on the schema.

Each part of the page a test reads follows a ``<!-- doc-test: NAME -->`` marker:
the fenced code block, the table or the paragraph right after it.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from graphql import parse, validate

from api.cli import parser
from api.cli.bills import ExitCode
from api.domain.beijing import BEIJING
from api.domain.bills import DiscrepancyKind, day_bounds, missing_window, needs_mark
from api.schema import schema
from api.schema.bills import ReconciliationStatus
from api.settings import Settings
from tests.docs.marked import MarkedDoc, unquoted

ROOT = Path(__file__).parents[2]
MARKED = MarkedDoc("reconciliation.md")
DOC = MARKED.text
PROSE = " ".join(DOC.split())


after_marker = MARKED.after_marker
code_block = MARKED.code_block
table = MARKED.table


def test_every_discrepancy_kind_is_explained_once_with_what_to_do() -> None:
    rows = table("kinds")
    listed = [unquoted(row[0]) for row in rows]
    assert sorted(listed) == sorted(kind.value for kind in DiscrepancyKind)
    assert len(listed) == len(set(listed))
    assert all(len(row) == 3 and row[1] and row[2] for row in rows)


def test_every_status_is_listed_with_whether_it_counts_as_reconciled() -> None:
    rows = {unquoted(row[0]): row[2] for row in table("statuses")}
    assert set(rows) == {status.value for status in ReconciliationStatus}
    from api.cli.bills import RECONCILED_STATUSES

    assert {status for status, counts in rows.items() if counts == "yes"} == RECONCILED_STATUSES
    assert {counts for counts in rows.values()} == {"yes", "no"}


def test_every_bill_setting_is_listed_with_its_default() -> None:
    rows = {unquoted(row[0]): row[1] for row in table("settings")}
    fields = {
        f"BRANCHPAY_{name.upper()}": field.default
        for name, field in Settings.model_fields.items()
        if name.startswith(("bill_", "discrepancy_"))
    }
    assert set(rows) == set(fields)
    for name, default in fields.items():
        shown = str(default).lower() if isinstance(default, bool) else str(default)
        assert rows[name] == shown, name
    defaults = Settings()
    assert f"**{defaults.bill_reconcile_at} Beijing time**" in PROSE
    assert f"`BRANCHPAY_BILL_TOLERANCE_SECONDS`, {defaults.bill_tolerance_seconds} s)" in PROSE
    assert f"a tolerance of **{defaults.bill_tolerance_seconds // 60} minutes**" in PROSE
    assert f"({defaults.discrepancy_stale_days}) days" in PROSE


def test_the_exit_codes_are_the_command_s() -> None:
    assert [int(row[0]) for row in table("exit-codes")] == [int(code) for code in ExitCode]


def test_the_commands_shown_parse_as_written() -> None:
    lines = [
        line.split("#")[0].split(">")[0].split()
        for line in DOC.splitlines()
        if line.startswith("branchpay reconcile bills")
    ]
    assert len(lines) >= 3
    for words in lines:
        args = parser().parse_args(words[1:])
        assert args.run.__name__ == "cmd_reconcile_bills", words


def test_the_graphql_examples_are_valid_against_the_schema() -> None:
    for name in ("list-query", "one-query", "resolve"):
        errors = validate(schema._schema, parse(code_block(name)))
        assert errors == [], (name, errors)


def test_the_user_errors_of_resolving_are_the_code_s() -> None:
    sources = [ROOT / "api" / "services" / "bills.py", ROOT / "api" / "schema" / "bills.py"]
    used = {
        code
        for path in sources
        for code in re.findall(r"UserErrorCode\.([A-Z_]+)", path.read_text(encoding="utf-8"))
    }
    listed = {unquoted(row[0]) for row in table("user-errors")}
    assert listed <= used, listed - used
    assert {"DISCREPANCY_NOT_FOUND", "DISCREPANCY_RESOLVED", "INVALID_NOTE"} <= listed


def test_the_midnight_example_holds() -> None:
    """23:59:59 on December 1, billed on December 2: matched there, flagged on neither day."""
    assert "a payment at 23:59:59 on December 1 (Beijing)" in after_marker("midnight")
    tau = timedelta(seconds=Settings().bill_tolerance_seconds)
    at = datetime(2026, 12, 1, 23, 59, 59, tzinfo=BEIJING).astimezone(UTC)
    first, second = date(2026, 12, 1), date(2026, 12, 2)
    start, end = missing_window(first, tau)
    assert not start <= at < end  # not looked for on December 1
    start, end = missing_window(second, tau)
    assert start <= at < end  # December 2 looks for it, and its bill has it
    assert needs_mark(at, second, tau)  # so the match is marked for December 1 to see
    assert day_bounds(first) == (
        datetime(2026, 11, 30, 16, tzinfo=UTC),
        datetime(2026, 12, 1, 16, tzinfo=UTC),
    )


def test_the_page_is_linked_where_the_docs_are_listed() -> None:
    for page in ("README.md", "docs/architecture.md", "docs/payments.md"):
        text = (ROOT / page).read_text(encoding="utf-8")
        assert "reconciliation.md" in text, page
