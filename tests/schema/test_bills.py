"""Bill reconciliation over GraphQL, on the real app over HTTP: who sees what, pages, resolving.

The reconciliations and discrepancies are stored the way api/store/bills.py
stores them (its documented shape); the runs that write them are tested in
tests/services and by `branchpay reconcile bills` (tests/cli/test_bills.py).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from api.domain.bills import beijing_day
from tests.conftest import RunningService

NOW = datetime.now(UTC).replace(microsecond=0)
TODAY = beijing_day(NOW)
KINDS = ["MISSING_LOCALLY", "MISSING_ON_PLATFORM", "AMOUNT_MISMATCH", "STATUS_MISMATCH"]

LIST = """
query($branch: String, $provider: String, $from: Date, $to: Date) {
  reconciliations(branch: $branch, provider: $provider, from: $from, to: $to) {
    id branch provider billDate status error runs openDiscrepancies
    discrepancyCounts { kind count }
    totals { billLines matchedCount matchedFen feeFen billTotalsAgree
             bill { paymentCount paymentFen refundCount refundFen feeFen } }
  }
}
"""
ONE = """
query($id: ID!, $first: Int, $after: String, $kind: DiscrepancyKind, $open: Boolean) {
  reconciliation(id: $id) {
    id openDiscrepancies
    discrepancies(first: $first, after: $after, kind: $kind, open: $open) {
      edges { cursor node { id } }
      nodes { id kind outTradeNo outRefundNo billAmountFen ourAmountFen billStatus ourStatus
              occurredAt detectedAt open ageDays stale resolution { how note by at } }
      pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
    }
  }
}
"""
RESOLVE = """
mutation($id: ID!, $note: String!) {
  resolveDiscrepancy(input: {id: $id, note: $note}) {
    discrepancy { id open ageDays stale resolution { how note by at } }
    userErrors { field message code }
  }
}
"""


def reconciliation(
    branch: str, day: date, provider: str = "sandbox", **fields: Any
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "_id": f"{branch}:{provider}:{day.isoformat()}",
        "branch": branch,
        "provider": provider,
        "billDate": day.isoformat(),
        "status": "COMPLETE",
        "error": None,
        "runs": 1,
        "startedAt": NOW,
        "finishedAt": NOW,
        "totals": {
            "billLines": 12,
            "matchedCount": 10,
            "matchedFen": 59_900,
            "paymentCount": 11,
            "paymentFen": 65_890,
            "refundCount": 1,
            "refundFen": 5_990,
            "feeFen": 360,
            "bill": {
                "paymentCount": 11,
                "paymentFen": 65_890,
                "refundCount": 1,
                "refundFen": 5_990,
                "feeFen": 360,
            },
            "billTotalsAgree": True,
        },
        "discrepancyCounts": {},
        "openDiscrepancies": 0,
    }
    doc.update(fields)
    return doc


def discrepancy(
    rec: dict[str, Any], kind: str, number: int, *, detected: datetime = NOW, **fields: Any
) -> dict[str, Any]:
    out_trade_no = f"T{number:05d}"
    doc: dict[str, Any] = {
        "_id": f"{rec['_id']}:{kind}:{out_trade_no}:",
        "reconciliationId": rec["_id"],
        "branch": rec["branch"],
        "provider": rec["provider"],
        "billDate": rec["billDate"],
        "kind": kind,
        "lineKind": "PAYMENT",
        "outTradeNo": out_trade_no,
        "outRefundNo": None,
        "providerTradeNo": f"sbx{number}",
        "billAmountFen": 5_990 if kind != "MISSING_ON_PLATFORM" else None,
        "ourAmountFen": None if kind == "MISSING_LOCALLY" else 5_900,
        "billStatus": "SUCCEEDED" if kind != "MISSING_ON_PLATFORM" else None,
        "ourStatus": None if kind == "MISSING_LOCALLY" else "PENDING",
        "occurredAt": NOW - timedelta(days=1),
        "detectedAt": detected,
        "open": True,
        "resolution": None,
    }
    doc.update(fields)
    return doc


@pytest.fixture
def service(start_service: Callable[..., RunningService]) -> RunningService:
    # No scheduled run: it would add reconciliations of yesterday to what the tests store.
    running = start_service(bill_reconcile=False)
    yesterday = TODAY - timedelta(days=1)
    zj = reconciliation("zj", yesterday, openDiscrepancies=5)
    zj_old = reconciliation("zj", TODAY - timedelta(days=40))
    bj = reconciliation("bj", yesterday, status="NOT_READY", totals={})
    found = [
        discrepancy(zj, "MISSING_LOCALLY", 1),
        discrepancy(zj, "MISSING_ON_PLATFORM", 2, detected=NOW - timedelta(days=5)),
        discrepancy(zj, "AMOUNT_MISMATCH", 3),
        discrepancy(zj, "MISSING_LOCALLY", 4),
        discrepancy(zj, "STATUS_MISMATCH", 5),
        discrepancy(
            zj,
            "STATUS_MISMATCH",
            6,
            open=False,
            resolution={
                "how": "APPLIED",
                "note": "the platform's fact was applied",
                "by": "reconciliation",
                "at": NOW,
            },
        ),
    ]
    zj["discrepancyCounts"] = {
        "MISSING_LOCALLY": 2,
        "MISSING_ON_PLATFORM": 1,
        "AMOUNT_MISMATCH": 1,
        "STATUS_MISMATCH": 2,
    }
    running.db.reconciliations.insert_many([zj, zj_old, bj])
    running.db.discrepancies.insert_many(found)
    running.db.discrepancies.insert_one(
        discrepancy(reconciliation("bj", TODAY - timedelta(days=2)), "MISSING_LOCALLY", 9)
    )
    return running


def test_a_partner_key_is_refused_with_a_code(service: RunningService) -> None:
    partner = service.client_for("partner", "zj")
    assert partner.error_codes(LIST) == ["FORBIDDEN"]
    assert partner.error_codes(ONE, {"id": f"zj:sandbox:{TODAY - timedelta(days=1)}"}) == [
        "FORBIDDEN"
    ]
    target = f"zj:sandbox:{TODAY - timedelta(days=1)}:MISSING_LOCALLY:T00001:"
    assert partner.error_codes(RESOLVE, {"id": target, "note": "mine"}) == ["FORBIDDEN"]
    stored = service.db.discrepancies.find_one({"_id": target})
    assert stored is not None and stored["open"] is True


def test_ops_lists_every_branch_newest_first_within_the_window(service: RunningService) -> None:
    yesterday = (TODAY - timedelta(days=1)).isoformat()
    listed = service.client.data(LIST)["reconciliations"]
    assert sorted((r["branch"], r["billDate"]) for r in listed) == [
        ("bj", yesterday),
        ("zj", yesterday),
    ]
    zj = next(r for r in listed if r["branch"] == "zj")
    assert zj["id"] == f"zj:sandbox:{yesterday}" and zj["status"] == "COMPLETE"
    assert zj["openDiscrepancies"] == 5 and zj["runs"] == 1
    assert {c["kind"]: c["count"] for c in zj["discrepancyCounts"]} == {
        "MISSING_LOCALLY": 2,
        "MISSING_ON_PLATFORM": 1,
        "AMOUNT_MISMATCH": 1,
        "STATUS_MISMATCH": 2,
        "DUPLICATE_ON_BILL": 0,
    }
    assert zj["totals"]["matchedFen"] == 59_900 and zj["totals"]["billTotalsAgree"] is True
    assert zj["totals"]["bill"]["feeFen"] == 360
    bj = next(r for r in listed if r["branch"] == "bj")
    assert bj["status"] == "NOT_READY" and bj["totals"]["bill"] is None

    wide = service.client.data(
        LIST, {"branch": "zj", "from": (TODAY - timedelta(days=60)).isoformat()}
    )["reconciliations"]
    assert [r["billDate"] for r in wide] == [yesterday, (TODAY - timedelta(days=40)).isoformat()]
    assert service.client.data(LIST, {"provider": "alipay"})["reconciliations"] == []


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"from": "2026-12-02", "to": "2026-12-01"}, "from must not be after to"),
        ({"from": "2024-01-01", "to": "2026-12-01"}, "at most 366 days"),
        ({"branch": "zj\x00"}, "branch"),
        ({"provider": "p" * 33}, "provider"),
        ({"from": "2026-02-30"}, "Date"),
    ],
)
def test_a_bad_window_or_name_is_a_coded_error(
    service: RunningService, variables: dict[str, Any], message: str
) -> None:
    body = service.client.post(LIST, variables)
    assert [e["extensions"]["code"] for e in body["errors"]] == ["BAD_USER_INPUT"]
    assert message in body["errors"][0]["message"]


def test_a_branch_admin_sees_and_resolves_only_its_own_branch(service: RunningService) -> None:
    admin = service.client_for("branch_admin", "zj")
    listed = admin.data(LIST)["reconciliations"]
    assert [r["branch"] for r in listed] == ["zj"]
    yesterday = TODAY - timedelta(days=1)
    assert admin.data(ONE, {"id": f"bj:sandbox:{yesterday}"})["reconciliation"] is None
    assert admin.data(ONE, {"id": f"zj:sandbox:{yesterday}"})["reconciliation"] is not None
    other = f"bj:sandbox:{TODAY - timedelta(days=2)}:MISSING_LOCALLY:T00009:"
    payload = admin.data(RESOLVE, {"id": other, "note": "not mine"})["resolveDiscrepancy"]
    assert payload["discrepancy"] is None
    assert [e["code"] for e in payload["userErrors"]] == ["DISCREPANCY_NOT_FOUND"]
    stored = service.db.discrepancies.find_one({"_id": other})
    assert stored is not None and stored["open"] is True and stored["resolution"] is None
    assert service.db.audit_log.count_documents({"action": "DISCREPANCY_RESOLVED"}) == 0


def test_discrepancies_page_by_id_and_filter_by_kind_and_open(service: RunningService) -> None:
    rec_id = f"zj:sandbox:{TODAY - timedelta(days=1)}"
    seen: list[str] = []
    after = None
    pages = 0
    while True:
        page = service.client.data(ONE, {"id": rec_id, "first": 2, "after": after})
        connection = page["reconciliation"]["discrepancies"]
        assert [e["node"]["id"] for e in connection["edges"]] == [
            n["id"] for n in connection["nodes"]
        ]
        assert connection["pageInfo"]["hasPreviousPage"] is (after is not None)
        seen += [node["id"] for node in connection["nodes"]]
        pages += 1
        if not connection["pageInfo"]["hasNextPage"]:
            break
        after = connection["pageInfo"]["endCursor"]
    assert pages == 3 and len(seen) == 6 and seen == sorted(seen)

    missing = service.client.data(ONE, {"id": rec_id, "kind": "MISSING_LOCALLY"})
    nodes = missing["reconciliation"]["discrepancies"]["nodes"]
    assert [n["outTradeNo"] for n in nodes] == ["T00001", "T00004"]
    first = nodes[0]
    assert (first["billAmountFen"], first["ourAmountFen"]) == (5_990, None)
    assert (first["billStatus"], first["ourStatus"], first["outRefundNo"]) == (
        "SUCCEEDED",
        None,
        None,
    )

    closed = service.client.data(ONE, {"id": rec_id, "open": False})
    (applied,) = closed["reconciliation"]["discrepancies"]["nodes"]
    assert applied["outTradeNo"] == "T00006" and applied["open"] is False
    assert applied["resolution"]["how"] == "APPLIED"
    assert applied["resolution"]["by"] == "reconciliation"
    still_open = service.client.data(ONE, {"id": rec_id, "open": True, "first": 100})
    assert len(still_open["reconciliation"]["discrepancies"]["nodes"]) == 5

    old = next(
        n
        for n in service.client.data(ONE, {"id": rec_id, "kind": "MISSING_ON_PLATFORM"})[
            "reconciliation"
        ]["discrepancies"]["nodes"]
    )
    assert old["ageDays"] == 5 and old["stale"] is True  # open, older than 3 days
    assert first["ageDays"] == 0 and first["stale"] is False


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"first": 101}, "first must be between 0 and 100"),
        ({"first": -1}, "first must be between 0 and 100"),
        ({"after": "zj:sandbox:2020-01-01:MISSING_LOCALLY:T1:"}, "malformed cursor"),
        ({"after": "x" * 1000}, "malformed cursor"),
        ({"kind": "SOMETHING_ELSE"}, "DiscrepancyKind"),
    ],
)
def test_a_bad_page_argument_is_a_coded_error(
    service: RunningService, variables: dict[str, Any], message: str
) -> None:
    rec_id = f"zj:sandbox:{TODAY - timedelta(days=1)}"
    body = service.client.post(ONE, {"id": rec_id, **variables})
    assert [e["extensions"]["code"] for e in body["errors"]] == ["BAD_USER_INPUT"], body
    assert message in body["errors"][0]["message"]


def test_resolving_closes_it_once_with_the_key_s_name_and_an_audit_entry(
    service: RunningService,
) -> None:
    admin = service.client_for("branch_admin", "zj")
    target = f"zj:sandbox:{TODAY - timedelta(days=1)}:AMOUNT_MISMATCH:T00003:"
    before = service.db.discrepancies.find_one({"_id": target})

    for note, why in (("", "note must be"), ("ok\x1b", "control characters"), ("n" * 501, "note")):
        refused = admin.data(RESOLVE, {"id": target, "note": note})["resolveDiscrepancy"]
        assert refused["discrepancy"] is None
        assert [(e["code"], e["field"]) for e in refused["userErrors"]] == [
            ("INVALID_NOTE", ["note"])
        ]
        assert why in refused["userErrors"][0]["message"]
    assert service.db.discrepancies.find_one({"_id": target}) == before

    note = "partial capture on the platform\n(ticket FIN-2291)"
    payload = admin.data(RESOLVE, {"id": target, "note": note})["resolveDiscrepancy"]
    assert payload["userErrors"] == []
    resolved = payload["discrepancy"]
    assert resolved["id"] == target and resolved["open"] is False and resolved["stale"] is False
    assert resolved["resolution"]["how"] == "MANUAL" and resolved["resolution"]["note"] == note
    assert resolved["resolution"]["by"] == service_key_name(service, admin)
    entries = list(service.db.audit_log.find({"action": "DISCREPANCY_RESOLVED"}))
    assert len(entries) == 1 and entries[0]["target"] == target
    assert entries[0]["actor"] == resolved["resolution"]["by"] and entries[0]["branch"] == "zj"
    rec = service.db.reconciliations.find_one({"_id": target.rsplit(":AMOUNT", 1)[0]})
    assert rec is not None and rec["openDiscrepancies"] == 4

    again = admin.data(RESOLVE, {"id": target, "note": "again"})["resolveDiscrepancy"]
    assert again["discrepancy"] is None
    assert [e["code"] for e in again["userErrors"]] == ["DISCREPANCY_RESOLVED"]
    assert service.db.audit_log.count_documents({"action": "DISCREPANCY_RESOLVED"}) == 1
    stored = service.db.discrepancies.find_one({"_id": target})
    assert stored is not None and stored["resolution"]["note"] == note

    unknown = admin.data(RESOLVE, {"id": "zj:nothing", "note": "x"})["resolveDiscrepancy"]
    assert [e["code"] for e in unknown["userErrors"]] == ["DISCREPANCY_NOT_FOUND"]


def service_key_name(service: RunningService, client: Any) -> str:
    record = service.db.api_keys.find_one({"_id": client.key.split("_")[1]})
    assert record is not None
    return str(record["name"])
