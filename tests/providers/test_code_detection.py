"""Which wallet a scanned payment code belongs to, across the installed built-in providers.

A counter sale names no provider: the core finds it from the code with
``detect_wallet`` over the installed classes' ``payment_code_pattern`` (the
prefix table of channels.md section 1.4: WeChat 18 digits starting 10-15,
Alipay 16-24 digits starting 25-30, UnionPay 19 digits starting 62; the
sandbox's own 99 + 16 digits). The classes are the real ones, found through
the ``branchpay.providers`` entry points as the service finds them.
"""

from __future__ import annotations

import pytest

from api.plugins.contract import Provider
from api.plugins.manager import installed_providers, load_plugin_manager
from api.services.payments.start import detect_wallet

BUILT_IN = ("sandbox", "wechatpay", "alipay", "unionpay")


CODES = [
    # sandbox: 99 + 16 digits
    ("99" + "1" * 16, "sandbox"),
    ("99" + "1" * 15, None),
    # UnionPay (云闪付): 19 digits starting 62
    ("62" + "0" * 16 + "1", "unionpay"),
    ("6212345678901234567", "unionpay"),
    ("62" + "1" * 16, None),  # 18 digits
    ("62" + "1" * 18, None),  # 20 digits
    ("62" + "1" * 16 + "a", None),
    ("63" + "1" * 17, None),
    # WeChat Pay: 18 digits starting 10..15
    ("10" + "1" * 16, "wechatpay"),
    ("134567890123456789", "wechatpay"),
    ("15" + "9" * 16, "wechatpay"),
    ("16" + "1" * 16, None),
    ("13" + "1" * 15, None),  # 17 digits
    ("13" + "1" * 17, None),  # 19 digits
    ("13" + "1" * 15 + "x", None),
    # Alipay: 16..24 digits starting 25..30
    ("25" + "1" * 14, "alipay"),
    ("28" + "1" * 16, "alipay"),
    ("30" + "1" * 22, "alipay"),
    ("25" + "1" * 13, None),  # 15 digits
    ("25" + "1" * 23, None),  # 25 digits
    ("31" + "1" * 16, None),
    ("24" + "1" * 16, None),
    # Of no wallet
    ("0" * 18, None),
    ("", None),
]


@pytest.fixture(scope="module")
def classes() -> list[type[Provider]]:
    installed = installed_providers(load_plugin_manager())
    missing = [name for name in BUILT_IN if name not in installed]
    assert not missing, f"built-in providers not installed: {missing}"
    return [installed[name] for name in BUILT_IN]


@pytest.mark.parametrize(("code", "expected"), CODES)
def test_a_code_maps_to_its_wallet_only(
    classes: list[type[Provider]], code: str, expected: str | None
) -> None:
    found = [cls.name for cls in detect_wallet(classes, code)]
    assert found == ([expected] if expected else []), code
