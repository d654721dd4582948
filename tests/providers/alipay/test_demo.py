"""Alipay configured as a branch configures it: plugins.toml, key files, demo gateway.

The demo keys are written by ``ensure_demo_keys``, branches refer to them with
``{ file = ... }``, and notifications signed outside the adapter (by
python-alipay-sdk with the platform key from those files) are accepted for
the right branch and rejected when tampered with or sent to another branch.
"""

from __future__ import annotations

import stat
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
from alipay import AliPay

from api.config.model import ConfigError
from api.config.validate import load_config
from api.plugins.contract import (
    AttemptState,
    EventKind,
    NotificationMismatch,
    NotificationRejected,
    PaymentMethod,
    PaymentRequest,
)
from providers.alipay import AlipayProvider
from providers.alipay.demo import (
    APP_PRIVATE_KEY_FILE,
    APP_PUBLIC_KEY_FILE,
    PLATFORM_PRIVATE_KEY_FILE,
    PLATFORM_PUBLIC_KEY_FILE,
    demo_simulator,
    ensure_demo_keys,
)
from providers.alipay.driver import notification_request
from providers.kit.loopback import LoopbackServer
from tests.providers.alipay.support import alipay_http

__all__ = ["alipay_http"]

PLUGINS_TOML = """
[branches.zj]
name = "China Mobile Zhejiang"
province = "Zhejiang"
operator = "China Mobile"

[branches.zj.providers.alipay]
enabled = true
app_id = "2021000000000011"
private_key = {{ file = "secrets/alipay_app_private_key.pem" }}
alipay_public_key = {{ file = "secrets/alipay_platform_public_key.pem" }}
gateway = "{gateway}"

[branches.bj]
name = "China Telecom Beijing"
province = "Beijing"
operator = "China Telecom"

[branches.bj.providers.alipay]
enabled = true
app_id = "2021000000000022"
private_key = {{ file = "secrets/alipay_app_private_key.pem" }}
alipay_public_key = {{ file = "secrets/alipay_platform_public_key.pem" }}
gateway = "{gateway}"
"""


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("alipay-demo")
    ensure_demo_keys(root / "secrets")
    return root


def test_demo_keys_are_private_and_created_once(demo_dir: Path) -> None:
    secrets_dir = demo_dir / "secrets"
    names = (
        APP_PRIVATE_KEY_FILE,
        APP_PUBLIC_KEY_FILE,
        PLATFORM_PRIVATE_KEY_FILE,
        PLATFORM_PUBLIC_KEY_FILE,
    )
    before = {name: (secrets_dir / name).read_text() for name in names}
    for name in names:
        assert stat.S_IMODE((secrets_dir / name).stat().st_mode) == 0o600
    ensure_demo_keys(secrets_dir)
    assert {name: (secrets_dir / name).read_text() for name in names} == before
    (secrets_dir / APP_PUBLIC_KEY_FILE).unlink()
    ensure_demo_keys(secrets_dir)
    # A lost public file is derived again from the private key it belongs to.
    assert (secrets_dir / APP_PUBLIC_KEY_FILE).read_text() == before[APP_PUBLIC_KEY_FILE]


def branch_providers(
    demo_dir: Path, gateway: str, http: httpx.AsyncClient
) -> dict[str, AlipayProvider]:
    path = demo_dir / "plugins.toml"
    path.write_text(PLUGINS_TOML.format(gateway=gateway))
    config = load_config(path, {"alipay": AlipayProvider})
    return {
        code: AlipayProvider(branch.providers["alipay"].settings, branch=code, http=http)
        for code, branch in config.branches.items()
    }


async def test_demo_branches_pay_through_the_demo_gateway(
    demo_dir: Path, alipay_http: httpx.AsyncClient
) -> None:
    with LoopbackServer(demo_simulator(demo_dir / "secrets")) as server:
        providers = branch_providers(demo_dir, f"{server.url}/gateway.do", alipay_http)
        zj = providers["zj"]
        request = PaymentRequest(
            out_trade_no="demo" + uuid.uuid4().hex[:20],
            amount_fen=19900,
            currency="CNY",
            subject="Number 138 0571 0000",
            method=PaymentMethod.QR_CODE,
            notify_url="http://127.0.0.1:9/notify/alipay/zj",
            expires_at=datetime.now(UTC) + timedelta(minutes=15),
        )
        action = await zj.create_payment(request)
        assert action.qr_code and action.qr_code.startswith(server.url)
        settled = await alipay_http.post(
            f"{server.url}/_control/settle/{request.out_trade_no}",
            data={"outcome": "success", "deliver": "0"},
        )
        notification = notification_request(settled.json()["notification"])
        event = await zj.parse_notification(notification)
        assert event is not None and event.kind is EventKind.PAYMENT_SUCCEEDED
        assert (await zj.query(request.out_trade_no)).state is AttemptState.SUCCEEDED
        with pytest.raises(NotificationMismatch, match="app_id"):
            await providers["bj"].parse_notification(notification)


def sdk_signed_notification(demo_dir: Path, app_id: str, **changes: str) -> bytes:
    """A notification signed the way Alipay signs, by code outside this repository."""
    secrets_dir = demo_dir / "secrets"
    signer = AliPay(
        appid=app_id,
        app_private_key_string=(secrets_dir / PLATFORM_PRIVATE_KEY_FILE).read_text(),
        alipay_public_key_string=(secrets_dir / APP_PUBLIC_KEY_FILE).read_text(),
        sign_type="RSA2",
    )
    params = {
        "notify_time": "2026-11-25 20:00:01",
        "notify_type": "trade_status_sync",
        "notify_id": "ac05099524730693a8b330c5ecf72da9786",
        "charset": "utf-8",
        "version": "1.0",
        "app_id": app_id,
        "trade_no": "2026112522001434251000000001",
        "out_trade_no": "zj2026112500000042",
        "trade_status": "TRADE_SUCCESS",
        "total_amount": "59.00",
        "receipt_amount": "59.00",
        "gmt_payment": "2026-11-25 20:00:00",
    }
    unsigned = "&".join(f"{k}={v}" for k, v in signer._ordered_data(dict(params)))
    params |= {"sign_type": "RSA2", "sign": signer._sign(unsigned)}
    params |= changes
    return urlencode(params).encode()


async def test_externally_signed_notifications_per_branch(
    demo_dir: Path, alipay_http: httpx.AsyncClient
) -> None:
    providers = branch_providers(demo_dir, "http://127.0.0.1:9/gateway.do", alipay_http)
    genuine = sdk_signed_notification(demo_dir, "2021000000000011")
    event = await providers["zj"].parse_notification(notification_request(genuine.decode()))
    assert event is not None and (event.amount_fen, event.out_trade_no) == (
        5900,
        "zj2026112500000042",
    )
    assert event.occurred_at == datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)
    replayed = await providers["zj"].parse_notification(notification_request(genuine.decode()))
    assert replayed is not None and replayed.event_id == event.event_id
    with pytest.raises(NotificationMismatch, match="app_id"):
        await providers["bj"].parse_notification(notification_request(genuine.decode()))
    tampered = sdk_signed_notification(demo_dir, "2021000000000011", total_amount="0.59")
    with pytest.raises(NotificationRejected, match="sign"):
        await providers["zj"].parse_notification(notification_request(tampered.decode()))


def test_inline_or_broken_keys_are_config_errors_that_hide_the_key(demo_dir: Path) -> None:
    key_text = (demo_dir / "secrets" / APP_PRIVATE_KEY_FILE).read_text()
    inline = demo_dir / "inline.toml"
    inline.write_text(
        PLUGINS_TOML.format(gateway="http://127.0.0.1:9/gateway.do").replace(
            '{ file = "secrets/alipay_app_private_key.pem" }',
            '"""' + key_text + '"""',
            1,
        )
    )
    with pytest.raises(ConfigError) as caught:
        load_config(inline, {"alipay": AlipayProvider})
    assert "private_key" in str(caught.value) and "never inline" in str(caught.value)

    broken = demo_dir / "secrets" / "broken.pem"
    broken.write_text(key_text[: len(key_text) // 2])
    broken_toml = demo_dir / "broken.toml"
    broken_toml.write_text(
        PLUGINS_TOML.format(gateway="http://127.0.0.1:9/gateway.do").replace(
            "alipay_app_private_key.pem", "broken.pem", 1
        )
    )
    with pytest.raises(ConfigError) as caught:
        load_config(broken_toml, {"alipay": AlipayProvider})
    message = str(caught.value)
    assert "[branches.zj.providers.alipay]" in message and "private_key" in message
    assert key_text.splitlines()[1][:20] not in message
