"""Exact conversion between integer fen and Alipay's yuan strings.

Alipay writes amounts as yuan with at most two decimals (``"88.88"``) and
accepts 0.01 to 100000000.00 per trade. Conversion is pure integer work on the
digits: no float ever touches an amount.
"""

from __future__ import annotations

import re

MIN_FEN = 1
MAX_FEN = 100_000_000_00  # 100000000.00 yuan, Alipay's per-trade ceiling

# ASCII digits only: Python's \d would also take full-width and other Unicode digits.
_YUAN = re.compile(r"(0|[1-9][0-9]{0,8})(?:\.([0-9]{1,2}))?")


class AmountError(ValueError):
    """An amount is malformed or outside what Alipay accepts."""


def fen_to_yuan(fen: int) -> str:
    """``8888`` -> ``"88.88"``; refuses amounts Alipay would reject."""
    if isinstance(fen, bool) or not isinstance(fen, int):
        raise AmountError("amount must be an integer number of fen")
    if not MIN_FEN <= fen <= MAX_FEN:
        raise AmountError("amount must be between 0.01 and 100000000.00 yuan")
    return f"{fen // 100}.{fen % 100:02d}"


def yuan_to_fen(text: str) -> int:
    """``"88.88"`` -> ``8888``, ``"88.8"`` -> ``8880``; zero is allowed (e.g. refund_fee)."""
    match = _YUAN.fullmatch(text)
    if match is None:
        raise AmountError("not a yuan amount with at most two decimals")
    whole, cents = match.group(1), match.group(2) or ""
    fen = int(whole) * 100 + int(cents.ljust(2, "0"))
    if fen > MAX_FEN:
        raise AmountError("amount above 100000000.00 yuan")
    return fen
