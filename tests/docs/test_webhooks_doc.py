"""docs/webhooks.md stays true: its examples run for real, and its lists are the code's.

Each part of the page a test reads follows a ``<!-- doc-test: NAME -->`` marker:
the fenced code block or the table right after it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from graphql import FieldNode, OperationDefinitionNode, SelectionSetNode, parse

from api.domain.webhooks import (
    DISABLE_AFTER,
    JITTER,
    RETRY_SCHEDULE,
    ROTATION_OVERLAP,
    RetryPolicy,
    WebhookEventType,
    new_secret,
    signature_header,
)
from api.schema.event_view import ORDER_QUERY
from api.settings import Settings
from tests.docs.marked import MarkedDoc, unquoted

ROOT = Path(__file__).parents[2]
DOC_PATH = ROOT / "docs" / "webhooks.md"
MARKED = MarkedDoc("webhooks.md")
DOC = MARKED.text
PROSE = " ".join(DOC.split())  # the text with its line breaks undone
BODY = json.dumps(
    {
        "id": "evt_665f1d0a9b1d4a6f3c2b7a41",
        "type": "order.paid",
        "timestamp": "2025-06-04T09:12:26.512000Z",
        "branch": "zj",
        "version": 3,
        "data": {"order": {"id": "T3JkZXI6NjY1", "status": "PAID"}},
    },
    separators=(",", ":"),
).encode()
UNITS = {"s": "seconds", "min": "minutes", "h": "hours"}


after_marker = MARKED.after_marker
code_block = MARKED.code_block
table = MARKED.table


def duration(text: str) -> timedelta:
    """``2 h 35 min`` -> 2 h 35 min; ``none`` and ``0`` -> zero."""
    if text in ("none", "0"):
        return timedelta()
    parts = re.fullmatch(r"(\d+ (?:s|min|h))( \d+ (?:s|min|h))*", text)
    assert parts, f"not a duration: {text!r}"
    total = timedelta()
    for amount, unit in re.findall(r"(\d+) (s|min|h)", text):
        total += timedelta(**{UNITS[unit]: int(amount)})
    return total


def signed_headers(
    secrets: list[str], body: bytes = BODY, *, age: float = 0.0, message_id: str | None = None
) -> dict[str, str]:
    """Headers as branchpay sends them, signed by ``api.domain.webhooks``."""
    message_id = message_id or json.loads(body)["id"]
    timestamp = int(time.time() - age)
    return {
        "content-type": "application/json",
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature_header(secrets, message_id, timestamp, body),
    }


# --- the lists ----------------------------------------------------------------------------


def test_the_event_types_are_the_code_s() -> None:
    listed = [unquoted(row[0]) for row in table("event-types")]
    assert len(listed) == len(set(listed)), f"an event type is listed twice: {listed}"
    assert sorted(listed) == sorted(kind.value for kind in WebhookEventType)


def test_the_retry_schedule_is_the_code_s() -> None:
    rows = table("retry-schedule")
    assert [int(row[0]) for row in rows] == list(range(1, RetryPolicy().max_tries + 1))
    assert duration(rows[0][1]) == timedelta()
    assert tuple(duration(row[1]) for row in rows[1:]) == RETRY_SCHEDULE
    elapsed = timedelta()
    for row in rows:
        elapsed += duration(row[1])
        assert duration(row[2]) == elapsed, row


def test_the_fixed_numbers_are_the_code_s() -> None:
    assert f"a random 0 to {round(JITTER * 100)} %" in PROSE
    assert f"at least **{DISABLE_AFTER.days} days** earlier" in PROSE
    assert f"beside it for {ROTATION_OVERLAP.total_seconds() / 3600:g} hours" in PROSE


def shown(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return f"{value:g}" if isinstance(value, float) else str(value)


def test_every_webhook_setting_is_listed_with_its_default() -> None:
    rows = {unquoted(row[0]): row[1] for row in table("settings")}
    fields = {
        f"BRANCHPAY_{name.upper()}": field.default
        for name, field in Settings.model_fields.items()
        if name.startswith(("webhook_", "webhooks_"))
    }
    assert set(rows) == set(fields)
    for name, default in fields.items():
        assert rows[name] == shown(default), name


def test_every_user_error_code_of_webhooks_is_listed() -> None:
    sources = [ROOT / "api" / "services" / "webhooks.py", ROOT / "api" / "schema" / "webhooks.py"]
    used = {
        code
        for path in sources
        for code in re.findall(r"UserErrorCode\.([A-Z_]+)", path.read_text(encoding="utf-8"))
    }
    listed = [unquoted(row[0]) for row in table("user-errors")]
    assert sorted(listed) == sorted(used)


def selected(selection: SelectionSetNode | None) -> dict[str, Any]:
    """A selection set as field name -> its own selection (None for a leaf)."""
    fields: dict[str, Any] = {}
    for node in selection.selections if selection else ():
        assert isinstance(node, FieldNode)
        fields[node.name.value] = selected(node.selection_set) if node.selection_set else None
    return fields


def assert_shaped(value: Any, shape: dict[str, Any], where: str) -> None:
    assert isinstance(value, dict) and set(value) == set(shape), (where, value)
    for name, inner in shape.items():
        if inner is None or value[name] is None:
            continue
        for element in value[name] if isinstance(value[name], list) else [value[name]]:
            assert_shaped(element, inner, f"{where}.{name}")


def test_the_body_example_has_the_shape_branchpay_sends() -> None:
    example = json.loads(code_block("body-example"))
    assert set(example) == {"id", "type", "timestamp", "branch", "version", "data"}
    assert example["type"] in set(WebhookEventType)
    (query,) = parse(ORDER_QUERY).definitions
    assert isinstance(query, OperationDefinitionNode)
    order = selected(query.selection_set)["order"]
    assert set(example["data"]) == {"order", "payment", "refund"}
    assert_shaped(example["data"]["order"], order, "data.order")
    assert_shaped(example["data"]["payment"], order["payments"], "data.payment")
    assert_shaped(example["data"]["refund"], order["payments"]["refunds"], "data.refund")


# --- the verification examples ------------------------------------------------------------


def test_the_python_verification_example_refuses_forged_and_stale_bodies() -> None:
    from standardwebhooks.webhooks import WebhookVerificationError

    example: dict[str, Any] = {}
    exec(compile(code_block("python-verify"), f"{DOC_PATH}#python-verify", "exec"), example)
    verified_event = example["verified_event"]
    secret, old = new_secret(), new_secret()

    assert verified_event(secret, BODY, signed_headers([secret])) == json.loads(BODY)
    # During a rotation the header holds a signature per secret in force.
    assert verified_event(old, BODY, signed_headers([secret, old])) == json.loads(BODY)
    with pytest.raises(WebhookVerificationError):
        verified_event(secret, BODY, signed_headers([new_secret()]))
    with pytest.raises(WebhookVerificationError):
        verified_event(secret, BODY.replace(b"PAID", b"PAYD"), signed_headers([secret]))
    with pytest.raises(WebhookVerificationError):
        verified_event(secret, BODY, signed_headers([secret], age=600))


NODE_HARNESS = """
const { verifyWebhook } = require("./verify.js");
const input = JSON.parse(require("node:fs").readFileSync(0, "utf8"));
const ok = verifyWebhook(input.secret, input.headers, Buffer.from(input.body, "utf8"));
process.stdout.write(ok ? "valid" : "invalid");
process.exit(ok ? 0 : 1);
"""


def node_verifies(folder: Path, secret: str, headers: dict[str, str], body: bytes) -> bool:
    node = shutil.which("node")
    if node is None:
        pytest.fail(
            "node is not on PATH: the Node example of docs/webhooks.md cannot be run. "
            "Install Node.js (18+) on this machine; this test does not skip."
        )
    run = subprocess.run(
        [node, "harness.js"],
        cwd=folder,
        input=json.dumps({"secret": secret, "headers": headers, "body": body.decode()}),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.stdout in ("valid", "invalid"), (run.stdout, run.stderr)
    assert (run.returncode == 0) is (run.stdout == "valid"), run
    return run.stdout == "valid"


def test_the_node_verification_example_refuses_forged_and_stale_bodies(tmp_path: Path) -> None:
    (tmp_path / "verify.js").write_text(code_block("node-verify"), encoding="utf-8")
    (tmp_path / "harness.js").write_text(NODE_HARNESS, encoding="utf-8")
    secret, old = new_secret(), new_secret()

    assert node_verifies(tmp_path, secret, signed_headers([secret]), BODY)
    assert node_verifies(tmp_path, old, signed_headers([secret, old]), BODY)
    assert not node_verifies(tmp_path, secret, signed_headers([new_secret()]), BODY)
    forged_body = BODY.replace(b"PAID", b"PAYD")
    assert not node_verifies(tmp_path, secret, signed_headers([secret]), forged_body)
    assert not node_verifies(tmp_path, secret, signed_headers([secret], age=600), BODY)


# --- the complete receiver ----------------------------------------------------------------


@dataclass
class RunningReceiver:
    url: str
    secret: str
    example: dict[str, Any]

    def post(self, headers: dict[str, str], body: bytes = BODY) -> int:
        with httpx.Client(trust_env=False, timeout=10) as client:
            return client.post(self.url, headers=headers, content=body).status_code

    def processed(self) -> list[str]:
        """The ids the example's worker processed, once it has worked off its queue."""
        self.example["events"].join()
        return list(self.example["processed"])


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[RunningReceiver]:
    """The receiver example of docs/webhooks.md, run as its ``__main__`` runs it, on a free port."""
    secret = new_secret()
    monkeypatch.setenv("WEBHOOK_SECRETS", f"{secret} {new_secret()}")
    example: dict[str, Any] = {"__name__": "webhook_receiver"}
    exec(compile(code_block("python-receiver"), f"{DOC_PATH}#python-receiver", "exec"), example)
    threading.Thread(target=example["work_forever"], daemon=True).start()
    server = ThreadingHTTPServer(("127.0.0.1", 0), example["Receiver"])
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    try:
        yield RunningReceiver(f"http://127.0.0.1:{server.server_address[1]}/", secret, example)
    finally:
        server.shutdown()
        server.server_close()
        serving.join(timeout=5)


def test_the_receiver_accepts_a_signed_event_and_processes_it(receiver: RunningReceiver) -> None:
    assert receiver.post(signed_headers([receiver.secret])) == 204
    assert receiver.processed() == [json.loads(BODY)["id"]]


def test_the_receiver_accepts_a_signature_among_several(receiver: RunningReceiver) -> None:
    assert receiver.post(signed_headers([new_secret(), receiver.secret])) == 204
    assert receiver.processed() == [json.loads(BODY)["id"]]


def test_the_receiver_refuses_a_forged_signature(receiver: RunningReceiver) -> None:
    status = receiver.post(signed_headers([new_secret()]))
    assert 400 <= status < 500, status
    tampered = receiver.post(signed_headers([receiver.secret]), BODY.replace(b"PAID", b"PAYD"))
    assert 400 <= tampered < 500, tampered
    assert receiver.processed() == []


def test_the_receiver_refuses_a_stale_timestamp(receiver: RunningReceiver) -> None:
    status = receiver.post(signed_headers([receiver.secret], age=600))
    assert 400 <= status < 500, status
    assert receiver.processed() == []


def test_the_receiver_acknowledges_a_repeated_id_without_processing_it_again(
    receiver: RunningReceiver,
) -> None:
    headers = signed_headers([receiver.secret])
    assert receiver.post(headers) == 204
    # A later try of the same event: the same id, a fresh timestamp and signature.
    assert receiver.post(signed_headers([receiver.secret])) == 204
    assert receiver.processed() == [json.loads(BODY)["id"]]
    # A forged request must not poison the ids it has seen.
    other = BODY.replace(b"evt_665f1d0a9b1d4a6f3c2b7a41", b"evt_665f1d0a9b1d4a6f3c2b7a42")
    assert receiver.post(signed_headers([new_secret()], other), other) == 401
    assert receiver.post(signed_headers([receiver.secret], other), other) == 204
    assert receiver.processed() == [json.loads(BODY)["id"], json.loads(other)["id"]]
