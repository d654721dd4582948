"""pytest plugin ``branchpay_provider_kit``: default fixtures of the conformance suite.

Loaded automatically (entry point ``pytest11``) wherever branchpay is
installed. Defaults live here rather than on :class:`ProviderConformance` so
that a package's own module-level or conftest fixtures override them.
"""

from __future__ import annotations

import pytest

pytest.register_assert_rewrite("providers.kit.conformance")

from api.plugins.contract import PaymentMethod, Provider  # noqa: E402


@pytest.fixture
def provider() -> Provider:
    raise pytest.UsageError(
        "the conformance suite needs a `provider` fixture: an instance of your Provider "
        "whose settings point at your running simulator, with `branch` set"
    )


@pytest.fixture
def gateway() -> object:
    raise pytest.UsageError(
        "the conformance suite needs a `gateway` fixture: a providers.kit.GatewayDriver "
        "over your simulator"
    )


@pytest.fixture
def amount_fen() -> int:
    return 8800


@pytest.fixture
def payment_methods(provider: Provider) -> tuple[PaymentMethod, ...]:
    # A PAYMENT_CODE sale is charged with pay_with_code, not opened with
    # create_payment and settled by a payer: the kit's code cases cover it.
    methods = tuple(m for m in type(provider).methods if m is not PaymentMethod.PAYMENT_CODE)
    if not methods:
        pytest.skip("the provider offers only PAYMENT_CODE: the code cases cover it")
    return methods


@pytest.fixture
def payer_id(provider: Provider) -> str | None:
    if PaymentMethod.JSAPI in type(provider).methods:
        raise pytest.UsageError(
            "the provider offers JSAPI, so the conformance suite needs a `payer_id` fixture: "
            "a payer id your simulator accepts for in-app pay (WeChat openid, Alipay buyer "
            "user id 2088... or open_id), matching the provider's payer_id_pattern"
        )
    return None


@pytest.fixture
def notify_url(provider: Provider) -> str:
    # Nothing listens on the discard port: the kit reads notifications through
    # the GatewayDriver, and anything a simulator sends on its own goes nowhere.
    return f"http://127.0.0.1:9/notify/{type(provider).name}/{provider.branch}"
