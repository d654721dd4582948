"""The kit's counter, in-app and beyond-the-signature cases: they pass the sandbox, catch the broken.

Each broken provider or driver below is the sandbox with one fault a real
adapter could have; the kit must fail it with a message that says what is wrong.
"""

from __future__ import annotations

import dataclasses
import json
import re
import uuid
from typing import Any, ClassVar

import httpx
import pytest

from api.plugins.contract import (
    ActionKind,
    AttemptState,
    NotificationMismatch,
    NotificationRejected,
    NotificationRequest,
    PaymentAction,
    PaymentMethod,
    PaymentRequest,
    Provider,
    ProviderEvent,
    QueryResult,
    ReverseResult,
    ReverseState,
)
from providers.kit.conformance import ProviderConformance
from providers.kit.driver import CodeBehaviour, SettleOutcome
from providers.sandbox import SandboxProvider
from providers.sandbox.driver import SandboxDriver

Failed = pytest.fail.Exception
NOTIFY_URL = "http://127.0.0.1:9/notify/sandbox/zj_mobile"
OPENID = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"


def _broken(cls: type[SandboxProvider], good: SandboxProvider) -> SandboxProvider:
    return cls(good.settings, branch=good.branch, http=good.http)


def _code_args(provider: SandboxProvider, gateway: object) -> dict[str, Any]:
    return {"provider": provider, "gateway": gateway, "amount_fen": 8800, "notify_url": NOTIFY_URL}


def _args(provider: SandboxProvider, gateway: object) -> dict[str, Any]:
    return {
        **_code_args(provider, gateway),
        "payment_methods": (PaymentMethod.QR_CODE,),
        "payer_id": None,
    }


# --- a JSAPI provider the kit passes, and its broken versions ------------------------------


class _InAppProvider(SandboxProvider):
    """The sandbox with in-app pay: the simulator's attempt, the page's signed parameters."""

    methods: ClassVar[tuple[PaymentMethod, ...]] = (
        *SandboxProvider.methods,
        PaymentMethod.JSAPI,
    )
    payer_id_pattern: ClassVar[re.Pattern[str] | None] = re.compile(r"[0-9A-Za-z_-]{6,128}")

    async def create_payment(self, request: PaymentRequest) -> PaymentAction:
        if request.method is not PaymentMethod.JSAPI:
            return await super().create_payment(request)
        if not request.payer_id:
            raise AssertionError("the kit opened a JSAPI attempt without the payer id")
        opened = await super().create_payment(
            dataclasses.replace(request, method=PaymentMethod.WAP, payer_id=None)
        )
        return self._client_action(request, opened)

    def _client_action(self, request: PaymentRequest, opened: PaymentAction) -> PaymentAction:
        params = {
            "appId": "wx8888888888888888",
            "timeStamp": "1767225600",
            "nonceStr": uuid.uuid4().hex,
            "package": f"prepay_id={request.out_trade_no}",
            "signType": "RSA",
            "paySign": uuid.uuid4().hex,
        }
        return PaymentAction(kind=ActionKind.REQUEST_PAYMENT, client_params=params)


class _UnsignedClientParams(_InAppProvider):
    def _client_action(self, request: PaymentRequest, opened: PaymentAction) -> PaymentAction:
        action = super()._client_action(request, opened)
        assert action.client_params is not None
        return dataclasses.replace(action, client_params={**action.client_params, "paySign": ""})


class _InAppAsRedirect(_InAppProvider):
    def _client_action(self, request: PaymentRequest, opened: PaymentAction) -> PaymentAction:
        return opened


class TestInAppConformance(ProviderConformance):
    """Every lifecycle case opens the JSAPI attempts with the module's payer id."""

    @pytest.fixture
    def provider(self, provider: SandboxProvider) -> SandboxProvider:
        return _broken(_InAppProvider, provider)

    @pytest.fixture
    def payer_id(self) -> str:
        return OPENID

    def test_the_default_methods_include_jsapi_not_payment_code(
        self, payment_methods: tuple[PaymentMethod, ...]
    ) -> None:
        assert PaymentMethod.JSAPI in payment_methods
        assert PaymentMethod.PAYMENT_CODE not in payment_methods


async def test_kit_catches_in_app_parameters_that_are_not_filled(
    provider: SandboxProvider,
) -> None:
    suite = ProviderConformance()
    for cls, message in (
        (_UnsignedClientParams, r"client_params\['paySign'\] that is not a non-empty string"),
        (_InAppAsRedirect, "expected REQUEST_PAYMENT"),
    ):
        with pytest.raises(AssertionError, match=message):
            await suite.test_jsapi_payment_has_client_parameters(
                _broken(cls, provider), 8800, NOTIFY_URL, OPENID
            )


async def test_kit_catches_a_payer_id_fixture_the_provider_would_refuse(
    provider: SandboxProvider,
) -> None:
    with pytest.raises(AssertionError, match=r"does not match _InAppProvider\.payer_id_pattern"):
        await ProviderConformance().test_jsapi_payment_has_client_parameters(
            _broken(_InAppProvider, provider), 8800, NOTIFY_URL, "no spaces allowed"
        )


async def test_in_app_case_skips_a_provider_without_jsapi(provider: SandboxProvider) -> None:
    with pytest.raises(pytest.skip.Exception, match="does not offer JSAPI"):
        await ProviderConformance().test_jsapi_payment_has_client_parameters(
            provider, 8800, NOTIFY_URL, None
        )


# --- class attributes -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attributes", "message"),
    [
        ({"amount_limits_fen": (0, 100_000)}, r"it needs 1 <= low <= high"),
        ({"amount_limits_fen": (500, 100)}, r"it needs 1 <= low <= high"),
        ({"amount_limits_fen": (1.0, 100.0)}, "must be a \\(low, high\\) tuple of ints"),
        ({"amount_limits_fen": (1, 100)}, "the amount_fen fixture \\(8800\\) is outside"),
        ({"payment_code_pattern": r"99\d{16}"}, "must be a compiled pattern"),
        ({"payment_code_pattern": None}, "offers PAYMENT_CODE without a payment_code_pattern"),
        ({"pay_with_code": Provider.pay_with_code}, "without implementing"),
        ({"sub_merchant_settings": ("sub_mchid",)}, r"names \['sub_mchid'\], which are not"),
        (
            {"methods": (*SandboxProvider.methods, PaymentMethod.JSAPI)},
            "offers JSAPI without a payer_id_pattern",
        ),
    ],
)
def test_kit_catches_channel_attributes_that_do_not_hold(
    provider: SandboxProvider, attributes: dict[str, Any], message: str
) -> None:
    broken = type("Broken", (SandboxProvider,), attributes)
    with pytest.raises(AssertionError, match=message):
        ProviderConformance().test_channel_attributes(_broken(broken, provider), 8800)


# --- counter sales --------------------------------------------------------------------------


class _ReverseOnlySays(SandboxProvider):
    """Answers DONE to a reverse without asking the platform."""

    async def reverse(self, out_trade_no: str) -> ReverseResult:
        return ReverseResult(ReverseState.DONE)


class _ReverseForever(SandboxProvider):
    async def reverse(self, out_trade_no: str) -> ReverseResult:
        return ReverseResult(ReverseState.RETRY, message="payer still confirming")


class _ConfirmingIsFailed(SandboxProvider):
    """Reads "payer confirming" as a refusal (the WxJava 202 bug)."""

    async def pay_with_code(self, request: PaymentRequest) -> QueryResult:
        result = await super().pay_with_code(request)
        if result.state is AttemptState.PENDING:
            return QueryResult(state=AttemptState.FAILED)
        return result


class _FreshCodeEventIds(SandboxProvider):
    """Names the fact in pay_with_code's answer differently from the query's."""

    async def pay_with_code(self, request: PaymentRequest) -> QueryResult:
        result = await super().pay_with_code(request)
        events = tuple(dataclasses.replace(e, event_id=uuid.uuid4().hex) for e in result.events)
        return dataclasses.replace(result, events=events)


class _CodeInTheEvent(SandboxProvider):
    """Keeps the scanned code in the event's detail."""

    async def pay_with_code(self, request: PaymentRequest) -> QueryResult:
        result = await super().pay_with_code(request)
        events = tuple(
            dataclasses.replace(e, detail={"auth_code": request.auth_code}) for e in result.events
        )
        return dataclasses.replace(result, events=events)


class _NotifiedUnderAnotherId(SandboxProvider):
    """Names a notification's fact by its delivery, not as the query does."""

    async def parse_notification(self, request: NotificationRequest) -> ProviderEvent | None:
        event = await super().parse_notification(request)
        return event and dataclasses.replace(event, event_id="ntf-" + uuid.uuid4().hex)


class _PlainDriver:
    """A driver with only the required methods, over the sandbox's."""

    def __init__(self, inner: SandboxDriver) -> None:
        self.inner = inner

    async def settle(self, out_trade_no: str, outcome: SettleOutcome) -> NotificationRequest | None:
        return await self.inner.settle(out_trade_no, outcome)

    def forge(self, notification: NotificationRequest) -> NotificationRequest:
        return self.inner.forge(notification)

    def tamper(self, notification: NotificationRequest) -> NotificationRequest:
        return self.inner.tamper(notification)

    def unsigned(self, notification: NotificationRequest) -> NotificationRequest:
        return self.inner.unsigned(notification)


class _CodesOfAnotherWallet(SandboxDriver):
    def payment_code(self, behaviour: CodeBehaviour) -> str:
        return "13" + super().payment_code(behaviour)[2:]


class _OneCodeForAll(SandboxDriver):
    def payment_code(self, behaviour: CodeBehaviour) -> str:
        return "99" + "0" * 15 + {"pay": "1", "confirm": "2", "never": "3"}[behaviour]


async def test_kit_catches_a_reverse_that_leaves_the_money_taken(
    provider: SandboxProvider, gateway: SandboxDriver
) -> None:
    suite = ProviderConformance()
    lying = _broken(_ReverseOnlySays, provider)
    with pytest.raises(AssertionError, match="answered DONE \\(refunded\\), yet the ledger holds"):
        await suite.test_code_paid_then_reversed(**_code_args(lying, gateway))
    with pytest.raises(AssertionError, match="a later confirm must not charge a voided sale"):
        await suite.test_code_reversed_while_confirming_never_charges(**_code_args(lying, gateway))


async def test_kit_catches_a_reverse_that_never_ends(
    provider: SandboxProvider, gateway: SandboxDriver
) -> None:
    with pytest.raises(Failed, match="answered RETRY 5 times"):
        await ProviderConformance().test_code_never_confirmed_is_reversed(
            **_code_args(_broken(_ReverseForever, provider), gateway)
        )


async def test_kit_catches_a_confirming_payer_read_as_refused(
    provider: SandboxProvider, gateway: SandboxDriver
) -> None:
    broken = _broken(_ConfirmingIsFailed, provider)
    with pytest.raises(AssertionError, match="gave FAILED, not PENDING"):
        await ProviderConformance().test_code_payer_confirms(**_code_args(broken, gateway))


async def test_kit_catches_a_code_sale_applied_twice(
    provider: SandboxProvider, gateway: SandboxDriver
) -> None:
    suite = ProviderConformance()
    with pytest.raises(AssertionError, match="must carry pay_with_code's event_id"):
        await suite.test_code_paid_at_once(
            **_code_args(_broken(_FreshCodeEventIds, provider), gateway)
        )
    with pytest.raises(AssertionError, match="notification of the confirmed sale must carry"):
        await suite.test_code_payer_confirms(
            **_code_args(_broken(_NotifiedUnderAnotherId, provider), gateway)
        )


async def test_kit_catches_a_kept_payment_code(
    provider: SandboxProvider, gateway: SandboxDriver
) -> None:
    broken = _broken(_CodeInTheEvent, provider)
    with pytest.raises(AssertionError, match="shows the payment code") as caught:
        await ProviderConformance().test_code_paid_at_once(**_code_args(broken, gateway))
    assert not re.search(r"99\d{16}", str(caught.value)), "the kit's message shows the code"


async def test_kit_asks_a_driver_without_codes_for_them(
    provider: SandboxProvider, gateway: SandboxDriver
) -> None:
    plain = _PlainDriver(gateway)
    with pytest.raises(Failed, match="must implement payment_code and taken_fen"):
        await ProviderConformance().test_code_paid_at_once(**_code_args(provider, plain))


async def test_kit_catches_codes_of_another_pattern_and_repeated_codes(
    provider: SandboxProvider, http: httpx.AsyncClient
) -> None:
    suite = ProviderConformance()
    url = str(provider.settings.gateway)
    with pytest.raises(AssertionError, match="does not match payment_code_pattern"):
        await suite.test_payment_codes_match_the_pattern(provider, _CodesOfAnotherWallet(url, http))
    with pytest.raises(AssertionError, match="gave the same code twice"):
        await suite.test_payment_codes_match_the_pattern(provider, _OneCodeForAll(url, http))


async def test_counter_cases_skip_a_provider_without_payment_codes(
    provider: SandboxProvider, gateway: SandboxDriver
) -> None:
    class NoCounter(SandboxProvider):
        methods: ClassVar[tuple[PaymentMethod, ...]] = (PaymentMethod.QR_CODE,)

    with pytest.raises(pytest.skip.Exception, match="does not offer PAYMENT_CODE"):
        await ProviderConformance().test_code_paid_at_once(
            **_code_args(_broken(NoCounter, provider), gateway)
        )


# --- beyond the signature --------------------------------------------------------------------


class _AnyMerchant(SandboxProvider):
    """Verifies the signature, then takes a notification for any merchant account."""

    async def parse_notification(self, request: NotificationRequest) -> ProviderEvent | None:
        try:
            return await super().parse_notification(request)
        except NotificationMismatch:
            merchant = json.loads(request.body)["merchant_id"]
            settings = self.settings.model_copy(update={"merchant_id": merchant})
            other = SandboxProvider(settings, branch=self.branch, http=self.http)
            return await other.parse_notification(request)


class _MismatchAsForgery(SandboxProvider):
    """Rejects another merchant's notification as if it were forged (so it is re-sent)."""

    async def parse_notification(self, request: NotificationRequest) -> ProviderEvent | None:
        try:
            return await super().parse_notification(request)
        except NotificationMismatch as mismatch:
            raise NotificationRejected(str(mismatch)) from None


class _AmountOfTheAttempt(SandboxProvider):
    """Reports the amount the attempt was for instead of the one the platform signed."""

    async def parse_notification(self, request: NotificationRequest) -> ProviderEvent | None:
        event = await super().parse_notification(request)
        if event is None:
            return None
        queried = await self.query(event.out_trade_no)
        return dataclasses.replace(event, amount_fen=queried.amount_fen or event.amount_fen)


class _OwnNumbers(SandboxProvider):
    """Names the attempt from the platform's trade number, ignoring what was signed."""

    numbers: ClassVar[dict[str, str]] = {}

    async def parse_notification(self, request: NotificationRequest) -> ProviderEvent | None:
        event = await super().parse_notification(request)
        if event is None or event.provider_trade_no is None:
            return event
        known = self.numbers.setdefault(event.provider_trade_no, event.out_trade_no)
        return dataclasses.replace(event, out_trade_no=known)


async def test_kit_catches_a_notification_for_another_merchant_taken(
    provider: SandboxProvider, gateway: SandboxDriver
) -> None:
    suite = ProviderConformance()
    with pytest.raises(Failed, match="accepted a genuine notification for another merchant"):
        await suite.test_notification_for_another_merchant_is_a_mismatch(
            **_args(_broken(_AnyMerchant, provider), gateway)
        )
    with pytest.raises(Failed, match="raised NotificationRejected, not NotificationMismatch"):
        await suite.test_notification_for_another_merchant_is_a_mismatch(
            **_args(_broken(_MismatchAsForgery, provider), gateway)
        )


async def test_kit_catches_an_event_that_hides_what_was_signed(
    provider: SandboxProvider, gateway: SandboxDriver
) -> None:
    suite = ProviderConformance()
    with pytest.raises(AssertionError, match="must carry what the platform signed, so"):
        await suite.test_notification_resigned_with_another_amount_carries_it(
            **_args(_broken(_AmountOfTheAttempt, provider), gateway)
        )
    with pytest.raises(AssertionError, match="must carry what the platform signed"):
        await suite.test_notification_resigned_with_another_out_trade_no_carries_it(
            **_args(_broken(_OwnNumbers, provider), gateway)
        )


async def test_kit_asks_a_driver_without_resign_for_it(
    provider: SandboxProvider, gateway: SandboxDriver
) -> None:
    with pytest.raises(Failed, match=r"has no resign\(notification"):
        await ProviderConformance().test_notification_resigned_with_another_amount_carries_it(
            **_args(provider, _PlainDriver(gateway))
        )
