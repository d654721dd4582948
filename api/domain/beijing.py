"""Beijing time, in which Alipay, WeChat Pay and UnionPay write every wall-clock time.

China has kept UTC+8 all year since 1991, so a fixed offset is exact.
branchpay's own times are timezone-aware UTC; convert at the platform boundary.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

BEIJING = timezone(timedelta(hours=8), "Asia/Shanghai")


def to_beijing(moment: datetime, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    """``moment`` (timezone-aware) as Beijing wall-clock text in ``fmt``."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime: branchpay times are timezone-aware UTC")
    return moment.astimezone(BEIJING).strftime(fmt)


def from_beijing(text: str, fmt: str = "%Y-%m-%d %H:%M:%S") -> datetime:
    """Beijing wall-clock ``text`` in ``fmt`` as an aware UTC datetime; ValueError if malformed."""
    return datetime.strptime(text, fmt).replace(tzinfo=BEIJING).astimezone(UTC)


def beijing_now() -> datetime:
    """The current time on a Beijing clock."""
    return datetime.now(BEIJING)
