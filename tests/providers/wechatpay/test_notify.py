"""WeChat Pay callbacks through a running branchpay: POST /notify/wechatpay/{branch}.

branchpay (real app, uvicorn, store) is configured through plugins.toml with
two branches on different WeChat Pay merchants, both pointing at the
simulator. A Native (QR_CODE) attempt is started with GraphQL and paid at the
simulator without delivery; then every kind of bad callback is posted and
must get WeChat Pay's rejection reply (HTTP 400, ``{"code": "FAIL"}``), a log
line that names the reason and no secret, and change nothing, before the
genuine callback is accepted and pays the order once.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from providers.kit.loopback import LoopbackServer
from providers.wechatpay import signing
from providers.wechatpay.provider import MAX_NOTIFICATION_BYTES
from tests.conftest import RunningService
from tests.providers.notify_support import order_state, post_notification, started_attempt
from tests.providers.wechatpay.support import (
    KEY_SETTINGS,
    MCHID,
    PLATFORM_KEY_ID,
    merchant,
    session_keys,
    simulator_app,
    write_key_files,
)

BJ_MCHID = "1900000202"
BJ_APPID = "wx2421b1c4370ec43b"
REJECTED = {"code": "FAIL", "message": "rejected"}
ACCEPTED = {"code": "SUCCESS", "message": "OK"}

PLUGINS_TOML = f"""
[branches.zj]
name = "China Mobile Zhejiang"
province = "Zhejiang"
operator = "China Mobile"

[branches.zj.providers.wechatpay]
enabled = true
mchid = "1900000109"
appid = "wxd678efh567hg6787"
{KEY_SETTINGS}gateway = "{{gateway}}"

[branches.bj]
name = "China Telecom Beijing"
province = "Beijing"
operator = "China Telecom"

[branches.bj.providers.wechatpay]
enabled = true
mchid = "1900000202"
appid = "wx2421b1c4370ec43b"
{KEY_SETTINGS}gateway = "{{gateway}}"

[branches.yn]
name = "China Telecom Yunnan"
province = "Yunnan"
operator = "China Telecom"
"""


@pytest.fixture
def gateway_url() -> Iterator[str]:
    keys = session_keys()
    app = simulator_app(
        merchant(keys),
        merchant(keys, mchid=BJ_MCHID, appid=BJ_APPID),
    )
    with LoopbackServer(app) as server:
        yield server.url


@pytest.fixture
def branchpay(
    tmp_path: Path, start_service: Callable[..., RunningService], gateway_url: str
) -> RunningService:
    write_key_files(tmp_path)
    return start_service(PLUGINS_TOML, gateway=gateway_url)


def paid_at_simulator(
    gateway_url: str, qr_code: str, out_trade_no: str, *, timestamp: int | None = None
) -> tuple[dict[str, str], bytes]:
    """Pay at the simulator without delivering; the callback it made, signed at ``timestamp``."""
    if timestamp is None:
        paid = httpx.post(
            qr_code,
            data={"outcome": "success", "deliver": "0"},
            headers={"accept": "application/json"},
        )
        assert paid.json()["trade_state"] == "SUCCESS", paid.text
    query = {} if timestamp is None else {"timestamp": str(timestamp)}
    made = httpx.get(f"{gateway_url}/control/notifications/{out_trade_no}", params=query).json()
    (callback,) = made["notifications"]
    return callback["headers"], callback["body"].encode()


def signed(
    body: bytes, key: RSAPrivateKey | None = None, *, serial: str = PLATFORM_KEY_ID
) -> dict[str, str]:
    """Wechatpay-* headers for ``body``, signed now with the platform key unless ``key``."""
    timestamp = str(int(time.time()))
    nonce = signing.new_nonce()
    message = signing.response_message(timestamp, nonce, body)
    return {
        "Wechatpay-Timestamp": timestamp,
        "Wechatpay-Nonce": nonce,
        "Wechatpay-Serial": serial,
        "Wechatpay-Signature": signing.sign(key or session_keys().platform, message),
        "Wechatpay-Signature-Type": signing.SCHEMA,
    }


def transaction_of(body: bytes) -> dict[str, Any]:
    """The decrypted ``resource`` of a payment callback."""
    resource = json.loads(body)["resource"]
    plaintext = signing.decrypt_resource(
        session_keys().apiv3_key.encode(),
        resource["ciphertext"],
        nonce=resource["nonce"],
        associated_data=resource["associated_data"],
    )
    assert plaintext is not None
    fact: dict[str, Any] = json.loads(plaintext)
    return fact


def reencrypted(
    body: bytes, change: Callable[[dict[str, Any]], None], apiv3_key: str | None = None
) -> bytes:
    """The callback with its transaction changed and sealed again (with the branch's key)."""
    envelope = json.loads(body)
    fact = transaction_of(body)
    change(fact)
    nonce = secrets.token_urlsafe(9)[:12]
    resource = envelope["resource"]
    resource["nonce"] = nonce
    resource["ciphertext"] = signing.encrypt_resource(
        (apiv3_key or session_keys().apiv3_key).encode(),
        json.dumps(fact).encode(),
        nonce=nonce,
        associated_data=resource["associated_data"],
    )
    return json.dumps(envelope).encode()


def post(
    service: RunningService, body: bytes, headers: dict[str, str], branch: str = "zj"
) -> httpx.Response:
    response: httpx.Response = post_notification(
        service, "wechatpay", body, branch=branch, content_type="application/json", headers=headers
    )
    return response


def padded(body: bytes, size: int) -> bytes:
    """The callback JSON with an extra field, ``size`` bytes long in all."""
    envelope = json.loads(body)
    envelope["pad"] = ""
    room = size - len(json.dumps(envelope).encode())
    envelope["pad"] = "x" * room
    grown = json.dumps(envelope).encode()
    assert len(grown) == size
    return grown


def test_bad_callbacks_are_refused_and_change_nothing_then_the_genuine_one_pays(
    branchpay: RunningService, gateway_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    order_id, out_trade_no, action = started_attempt(branchpay, "wechatpay")
    genuine_headers, genuine = paid_at_simulator(gateway_url, action["qrCode"], out_trade_no)
    transaction = transaction_of(genuine)
    assert transaction["mchid"] == MCHID and transaction["amount"]["total"] == 5900
    before = order_state(branchpay, order_id)
    assert before["status"] == "PENDING_PAYMENT"
    assert [p["status"] for p in before["payments"]] == ["PENDING"]

    def amount(total: int) -> Callable[[dict[str, Any]], None]:
        return lambda fact: fact["amount"].update(total=total, payer_total=total)

    def field(name: str, value: str) -> Callable[[dict[str, Any]], None]:
        return lambda fact: fact.update({name: value})

    unsigned = {k: v for k, v in genuine_headers.items() if k != "Wechatpay-Signature"}
    tampered = reencrypted(genuine, amount(1))
    other_mchid = reencrypted(genuine, field("mchid", BJ_MCHID))
    other_appid = reencrypted(genuine, field("appid", BJ_APPID))
    unknown = reencrypted(genuine, field("out_trade_no", "zz" + uuid.uuid4().hex[:20]))
    other_apiv3_key = reencrypted(genuine, lambda fact: None, apiv3_key="k" * 32)
    stale_at = int(time.time()) - 10 * 60
    stale_headers, _ = paid_at_simulator(
        gateway_url, action["qrCode"], out_trade_no, timestamp=stale_at
    )
    malformed = b'{"id": "EV-1", "resource": '
    over_adapter_limit = padded(genuine, MAX_NOTIFICATION_BYTES + 1)
    # (case, body, headers, branch, what the log line must say)
    bad: list[tuple[str, bytes, dict[str, str], str, str]] = [
        ("unsigned", genuine, unsigned, "zj", "Wechatpay-Signature header is missing"),
        ("forged", genuine, signed(genuine, session_keys().stranger), "zj", "does not verify"),
        ("tampered", tampered, genuine_headers, "zj", "does not verify"),
        (
            "another key id",
            genuine,
            signed(genuine, serial="PUB_KEY_ID_0000000000000000000000000000"),
            "zj",
            "not the configured platform public key id",
        ),
        (
            "sealed with another APIv3 key",
            other_apiv3_key,
            signed(other_apiv3_key),
            "zj",
            "does not decrypt with the APIv3 key",
        ),
        ("replayed after 10 minutes", genuine, stale_headers, "zj", "stale or replayed"),
        ("malformed", malformed, signed(malformed), "zj", "body is not JSON"),
        (
            "over the adapter's limit",
            over_adapter_limit,
            signed(over_adapter_limit),
            "zj",
            "larger than any WeChat Pay callback",
        ),
    ]
    caplog.set_level(logging.INFO)
    logged = ""
    for case, body, headers, branch, reason in bad:
        caplog.clear()
        response = post(branchpay, body, headers, branch)
        assert (response.status_code, response.json()) == (400, REJECTED), (case, response.text)
        assert reason in caplog.text, (case, caplog.text)
        assert f"wechatpay/{branch}" in caplog.text, (case, caplog.text)
        assert order_state(branchpay, order_id) == before, case
        logged += caplog.text

    oversized = padded(genuine, 1024 * 1024 + 1)
    response = post(branchpay, oversized, signed(oversized))
    assert response.status_code == 413
    assert order_state(branchpay, order_id) == before

    keys = session_keys()
    for secret in (
        keys.apiv3_key,
        "".join(keys.merchant_pem.splitlines()[1:-1])[:40],
        "".join(keys.platform_pem.splitlines()[1:-1])[:40],
        json.loads(genuine)["resource"]["ciphertext"][:40],
    ):
        assert secret not in logged
    assert branchpay.db["payment_events"].count_documents({}) == 0

    # Genuinely signed but another merchant's or app's, or of no attempt of ours: kept
    # aside, answered so WeChat Pay stops re-sending, and nothing changes.
    # (case, body, headers, branch, the reason kept)
    not_ours: list[tuple[str, bytes, dict[str, str], str, str]] = [
        ("other mchid", other_mchid, signed(other_mchid), "zj", "mchid is not this branch's"),
        ("other appid", other_appid, signed(other_appid), "zj", "appid is not this branch's"),
        ("sent to another branch", genuine, genuine_headers, "bj", "mchid is not this branch's"),
        ("unknown out_trade_no", unknown, signed(unknown), "zj", "no attempt"),
    ]
    for case, body, headers, branch, reason in not_ours:
        caplog.clear()
        kept = post(branchpay, body, headers, branch)
        assert (kept.status_code, kept.json()) == (200, ACCEPTED), (case, kept.text)
        assert f"wechatpay/{branch}" in caplog.text, (case, caplog.text)
        assert order_state(branchpay, order_id) == before, case
        (_,) = branchpay.db["notification_mismatches"].find(
            {"provider": "wechatpay", "branch": branch, "reason": {"$regex": reason}}
        )
        assert keys.apiv3_key not in caplog.text, case
    assert branchpay.db["notification_mismatches"].count_documents({"provider": "wechatpay"}) == 4
    assert branchpay.db["payment_events"].count_documents({}) == 0

    accepted = post(branchpay, genuine, genuine_headers)
    assert (accepted.status_code, accepted.json()) == (200, ACCEPTED)
    replayed_headers, _ = paid_at_simulator(
        gateway_url, action["qrCode"], out_trade_no, timestamp=int(time.time())
    )
    replayed = post(branchpay, genuine, replayed_headers)
    assert (replayed.status_code, replayed.json()) == (200, ACCEPTED)
    order = order_state(branchpay, order_id)
    assert order["status"] == "PAID"
    (payment,) = order["payments"]
    assert payment["status"] == "SUCCEEDED" and not payment["flagged"]
    assert payment["providerTradeNo"] == transaction["transaction_id"]
    assert branchpay.db["payment_events"].count_documents({"outTradeNo": out_trade_no}) == 1


def test_wrong_amount_is_kept_aside_not_paid(branchpay: RunningService, gateway_url: str) -> None:
    order_id, out_trade_no, action = started_attempt(branchpay, "wechatpay")
    _, genuine = paid_at_simulator(gateway_url, action["qrCode"], out_trade_no)
    short = reencrypted(genuine, lambda fact: fact["amount"].update(total=590, payer_total=590))
    # Validly signed, but not the attempt's amount: refused after the signature, answered so
    # WeChat Pay stops re-sending it, kept aside, and nothing changes.
    reply = post(branchpay, short, signed(short))
    assert (reply.status_code, reply.json()) == (200, ACCEPTED)
    order = order_state(branchpay, order_id)
    assert order["status"] == "PENDING_PAYMENT"
    (payment,) = order["payments"]
    assert payment["status"] == "PENDING" and not payment["flagged"]
    (kept,) = branchpay.db["notification_mismatches"].find({"outTradeNo": out_trade_no})
    assert kept["amountFen"] == 590 and "the attempt is for" in kept["reason"]
