"""The built-in providers whose drivers cannot yet play the kit's checks beyond the signature.

Issue 18 asks every provider's conformance run to reject a notification for another
merchant and to carry a validly re-signed amount or out-trade-number, so branchpay can
refuse it. The sandbox's and WeChat Pay's drivers re-sign (``resign``); Alipay's and
UnionPay's simulators do not offer it yet. Their three cases are expected failures, strict:
the day a driver gains ``resign`` the case passes, the run fails, and the entry goes.
"""

from __future__ import annotations

import pytest

WITHOUT_RESIGN = frozenset({"alipay", "unionpay"})
BEYOND_THE_SIGNATURE = frozenset(
    {
        "test_notification_for_another_merchant_is_a_mismatch",
        "test_notification_resigned_with_another_amount_carries_it",
        "test_notification_resigned_with_another_out_trade_no_carries_it",
    }
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.name in BEYOND_THE_SIGNATURE and item.path.parent.name in WITHOUT_RESIGN:
            item.add_marker(
                pytest.mark.xfail(
                    strict=True,
                    reason=f"issue 18: the {item.path.parent.name} driver has no resign yet",
                )
            )
