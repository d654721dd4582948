"""Settings: the limits documented in docs/security.md are the ones in force."""

from __future__ import annotations

from datetime import time
from pathlib import Path

import pydantic
import pytest

from api.settings import LIMITS, Settings
from api.web import websocket

SECURITY = (Path(__file__).parents[1] / "docs" / "security.md").read_text(encoding="utf-8")


def shown(value: object) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{value:g}"


def test_every_limit_is_documented_with_its_default_and_meaning() -> None:
    for name in LIMITS:
        field = Settings.model_fields[name]
        row = f"| `BRANCHPAY_{name.upper()}` | {shown(field.default)} | {field.description} |"
        assert row in SECURITY, f"docs/security.md lacks or misstates: {row}"


def test_every_limit_setting_is_listed() -> None:
    bounded = {
        name
        for name in Settings.model_fields
        if name.startswith(("max_", "ws_", "store_", "rate_limit", "failed_auth"))
        and not isinstance(Settings.model_fields[name].default, bool)  # switches, not limits
    }
    assert bounded <= set(LIMITS)


def test_the_websocket_close_codes_are_documented() -> None:
    codes = [value for name, value in vars(websocket).items() if name.startswith("CLOSE_")]
    assert codes
    for code in [*codes, 4401, 4408, 4409]:
        assert f"| {code} |" in SECURITY


@pytest.mark.parametrize("bad", ["24:00", "9:30", "10:60", "ten"])
def test_the_daily_bill_reconciliation_time_is_a_time_of_day(bad: str) -> None:
    assert Settings(bill_reconcile_at="09:30").bill_reconcile_time == time(9, 30)
    assert Settings().bill_reconcile_time == time(10, 0)
    with pytest.raises(pydantic.ValidationError):
        Settings(bill_reconcile_at=bad)
